#![no_main]
//! See `spool_core::fuzzing::cluster_receive` for what the input means and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spool_core::fuzzing::cluster_receive(data));
