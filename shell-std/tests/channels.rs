//! The channel hub over spool_std's server; the tests are shared by both shells.

use spool_std as shell;

include!("common/channels_body.rs");
