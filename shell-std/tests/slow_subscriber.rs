//! A subscriber that stops reading, over spool_std's server; shared by both shells.

use spool_std as shell;

include!("common/slow_subscriber_body.rs");
