#![no_main]
//! See `switchboard_fuzz::sip::stream_framing` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::sip::stream_framing(data));
