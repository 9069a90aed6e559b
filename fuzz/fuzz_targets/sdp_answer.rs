#![no_main]
//! See `switchboard_fuzz::sdp::answer` (the input as an offer we answer) and
//! `switchboard_fuzz::sdp::answer_receive` (the input as the answer to our offer) for the
//! properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    switchboard_fuzz::sdp::answer(data);
    switchboard_fuzz::sdp::answer_receive(data);
});
