#![no_main]
//! See `switchboard_fuzz::rtcp::round_trip_reports` for the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| switchboard_fuzz::rtcp::round_trip_reports(data));
