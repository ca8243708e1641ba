//! The smol shell's raw layer and its bounds: the same tests as spool-std's.

#[path = "../../shell-std/tests/common/mod.rs"]
mod common;

#[path = "../../shell-std/examples/lines.rs"]
mod lines;

use spool_smol as shell;

include!("../../shell-std/tests/common/faults_body.rs");
