#![no_main]
//! See `switchboard_fuzz::sdp::answer` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::sdp::answer(data));
