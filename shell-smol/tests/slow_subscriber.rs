//! A subscriber that stops reading, over spool_smol's server; shared by both shells.

use spool_smol as shell;

include!("../../shell-std/tests/common/slow_subscriber_body.rs");
