#![no_main]
//! See `switchboard_fuzz::sip::message_round_trip` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::sip::message_round_trip(data));
