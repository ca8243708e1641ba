//! The channel hub over spool_smol's server; the tests are shared by both shells.

use spool_smol as shell;

include!("../../shell-std/tests/common/channels_body.rs");
