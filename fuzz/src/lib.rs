//! The properties the fuzz targets check, one function per target, so each target in
//! `fuzz_targets/` is one line and the properties can be read in one place.
//!
//! Every function panics (which libFuzzer reports as a crash) when a property fails; each
//! `assert!` says which property and why it must hold.

pub mod media;
pub mod realtime;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod sip;

/// Splits fuzzer input into records at `separator`, so a sequence of messages (for the SIP core)
/// stays a plain, readable file the mutator can work on and the corpus can be written by hand.
pub fn split_records<'a>(data: &'a [u8], separator: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.windows(separator.len()).position(|window| window == separator) {
            Some(at) => {
                let (record, after) = current.split_at(at);
                rest = after.get(separator.len()..);
                Some(record)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}
