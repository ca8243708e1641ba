#![no_main]
//! See `spool_core::fuzzing::channel_events` for what the input means and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spool_core::fuzzing::channel_events(data));
