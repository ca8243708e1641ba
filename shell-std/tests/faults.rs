//! The std shell's raw layer and its bounds; the tests are shared with spool-smol.

mod common;

#[path = "../examples/lines.rs"]
mod lines;

use spool_std as shell;

include!("common/faults_body.rs");
