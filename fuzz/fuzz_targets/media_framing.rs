#![no_main]
//! See `switchboard_fuzz::media::framing` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::media::framing(data));
