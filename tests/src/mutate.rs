//! Seeded mutations of SIP messages, for the end-to-end mutation test (tests/tests/sip_mutation.rs).
//!
//! A single-byte flipper never reaches the defects that matter (a multi-byte character where the
//! parser slices by byte position, a Content-Length that lies, a header repeated a thousand
//! times), so each mutation is one of a few kinds aimed at SIP's structure, and a message may get
//! several. Everything derives from one seed: the same seed gives the same messages.

/// SplitMix64: small, fast and good enough to pick mutations; reproducible across platforms.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The kinds of mutation, for the statistics a run prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    ByteFlips,
    Truncation,
    DuplicatedHeader,
    HugeHeader,
    ManyHeaders,
    LyingContentLength,
    Nuls,
    InvalidUtf8StartLine,
    MultiByteUtf8StartLine,
    CrlfMangling,
}

pub const KINDS: [Kind; 10] = [
    Kind::ByteFlips,
    Kind::Truncation,
    Kind::DuplicatedHeader,
    Kind::HugeHeader,
    Kind::ManyHeaders,
    Kind::LyingContentLength,
    Kind::Nuls,
    Kind::InvalidUtf8StartLine,
    Kind::MultiByteUtf8StartLine,
    Kind::CrlfMangling,
];

/// Multi-byte UTF-8 (2, 3 and 4 bytes) placed where a parser slicing by byte index breaks.
const MULTI_BYTE: [&str; 6] = ["é", "ü", "€", "中", "𝄞", "🙂"];
/// Byte sequences that are not UTF-8: a lone continuation byte, an overlong NUL, a truncated
/// 3-byte sequence, bytes that never occur, a surrogate encoded in UTF-8.
const INVALID_UTF8: [&[u8]; 6] =
    [b"\x80", b"\xC0\x80", b"\xE2\x82", b"\xFF\xFE", b"\xED\xA0\x80", b"\xF8\x88\x80\x80\x80"];

/// Applies one mutation of `kind` to `message`.
pub fn apply(kind: Kind, message: &mut Vec<u8>, rng: &mut Rng) {
    match kind {
        Kind::ByteFlips => {
            for _ in 0..1 + rng.below(8) {
                if !message.is_empty() {
                    let at = rng.below(message.len());
                    message[at] = rng.byte();
                }
            }
        }
        Kind::Truncation => {
            let keep = rng.below(message.len().max(1));
            message.truncate(keep);
        }
        Kind::DuplicatedHeader => {
            if let Some((start, end)) = random_header_line(message, rng) {
                let line = message[start..end].to_vec();
                let copies = *rng.pick(&[1usize, 2, 5, 20, 200, 1000]);
                let repeated: Vec<u8> = line.iter().copied().cycle().take(line.len() * copies).collect();
                message.splice(end..end, repeated);
            }
        }
        Kind::HugeHeader => {
            let size = *rng.pick(&[1_000usize, 8_000, 16_000, 60_000]);
            let name = rng.pick(&["X-Huge", "Subject", "Via", "Contact", "Call-ID", "To"]);
            let value: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
            let mut header = format!("{name}: ").into_bytes();
            header.extend_from_slice(&value);
            header.extend_from_slice(b"\r\n");
            insert_after_start_line(message, &header);
        }
        Kind::ManyHeaders => {
            let count = *rng.pick(&[100usize, 1_000, 3_000]);
            let headers: Vec<u8> = (0..count).flat_map(|i| format!("X-H{i}: v\r\n").into_bytes()).collect();
            insert_after_start_line(message, &headers);
        }
        Kind::LyingContentLength => {
            let value = *rng.pick(&["0", "1", "99999", "4294967296", "18446744073709551616", "-1", "abc", "", " 12 3"]);
            replace_header_value(message, b"content-length", value.as_bytes());
            if rng.below(3) == 0 {
                // A second, different Content-Length.
                insert_after_start_line(message, b"Content-Length: 7\r\n");
            }
        }
        Kind::Nuls => {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(message.len() + 1);
                message.insert(at, 0);
            }
        }
        Kind::InvalidUtf8StartLine => {
            let at = start_line_position(message, rng);
            let bytes = rng.pick(&INVALID_UTF8);
            message.splice(at..at, bytes.iter().copied());
        }
        Kind::MultiByteUtf8StartLine => {
            let at = start_line_position(message, rng);
            let text = rng.pick(&MULTI_BYTE);
            message.splice(at..at, text.bytes());
        }
        Kind::CrlfMangling => {
            // Bare LF, bare CR, a fold, or the blank line removed.
            let crlfs: Vec<usize> =
                message.windows(2).enumerate().filter(|(_, w)| w == b"\r\n").map(|(i, _)| i).collect();
            if !crlfs.is_empty() {
                let at = *rng.pick(&crlfs);
                const REPLACEMENTS: [&[u8]; 4] = [b"\n", b"\r", b"\r\n ", b""];
                let with = *rng.pick(&REPLACEMENTS);
                message.splice(at..at + 2, with.iter().copied());
            }
        }
    }
}

/// A mutated copy of `base`: 1 to 3 mutations of random kinds. Returns the kinds applied.
pub fn mutate(base: &[u8], rng: &mut Rng) -> (Vec<u8>, Vec<Kind>) {
    let mut message = base.to_vec();
    let mut kinds = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let kind = *rng.pick(&KINDS);
        apply(kind, &mut message, rng);
        kinds.push(kind);
    }
    (message, kinds)
}

/// A position in the first line, biased towards the first 12 bytes (method, the byte-8 and
/// byte-4 boundaries parsers like to slice at) and the version at the end.
fn start_line_position(message: &[u8], rng: &mut Rng) -> usize {
    let line_end = message.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(message.len());
    match rng.below(3) {
        0 => rng.below(line_end.min(12) + 1),
        1 => line_end.saturating_sub(rng.below(line_end.min(8) + 1)),
        _ => rng.below(line_end + 1),
    }
}

/// (start, end) of a random header line, CRLF included.
fn random_header_line(message: &[u8], rng: &mut Rng) -> Option<(usize, usize)> {
    let lines = header_lines(message);
    (!lines.is_empty()).then(|| *rng.pick(&lines))
}

fn header_lines(message: &[u8]) -> Vec<(usize, usize)> {
    let mut lines = Vec::new();
    let mut start = match message.iter().position(|&b| b == b'\n') {
        Some(i) => i + 1,
        None => return lines,
    };
    while let Some(len) = message[start..].iter().position(|&b| b == b'\n') {
        let end = start + len + 1;
        if end - start <= 2 {
            break; // blank line: end of headers
        }
        lines.push((start, end));
        start = end;
    }
    lines
}

fn insert_after_start_line(message: &mut Vec<u8>, bytes: &[u8]) {
    let at = message.iter().position(|&b| b == b'\n').map_or(message.len(), |i| i + 1);
    message.splice(at..at, bytes.iter().copied());
}

/// Replaces the value of the first header called `name` (lowercase).
fn replace_header_value(message: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    for (start, end) in header_lines(message) {
        let line = &message[start..end];
        if let Some(colon) = line.iter().position(|&b| b == b':')
            && line[..colon].trim_ascii().eq_ignore_ascii_case(name)
        {
            let value_end = end - usize::from(line.ends_with(b"\r\n")) - 1;
            message.splice(start + colon + 1..value_end, b" ".iter().chain(value).copied());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn the_same_seed_gives_the_same_messages() {
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..200).map(|_| mutate(MESSAGE, &mut rng).0).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn content_length_is_replaced_in_place() {
        let mut m = MESSAGE.to_vec();
        replace_header_value(&mut m, b"content-length", b"99999");
        assert!(m.ends_with(b"Content-Length: 99999\r\n\r\n"), "{}", String::from_utf8_lossy(&m));
    }

    #[test]
    fn multi_byte_text_lands_in_the_start_line() {
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            let mut m = MESSAGE.to_vec();
            apply(Kind::MultiByteUtf8StartLine, &mut m, &mut rng);
            let first_line = m.split(|&b| b == b'\n').next().unwrap();
            assert!(first_line.iter().any(|&b| b >= 0x80), "{}", String::from_utf8_lossy(&m));
        }
    }
}
