#![no_main]
//! See `spool_core::cassette::fuzz::live_decode` for what the input means and what is checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| spool_core::cassette::fuzz::live_decode(data));
