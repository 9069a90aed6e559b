//! Hand-written SIP over a raw UDP socket, for input no well-behaved peer would send.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Sends `message` (with `\n` line ends turned into CRLF) and collects every datagram answered
/// within `listen`.
pub fn exchange(target: SocketAddr, message: &str, listen: Duration) -> Vec<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind raw SIP socket");
    let local = socket.local_addr().expect("local addr");
    let wire = message.replace("\r\n", "\n").replace('\n', "\r\n").replace("LOCAL", &local.to_string());
    socket.send_to(wire.as_bytes(), target).expect("send raw SIP");
    collect(&socket, listen)
}

pub fn collect(socket: &UdpSocket, listen: Duration) -> Vec<String> {
    let deadline = Instant::now() + listen;
    let mut answers = Vec::new();
    let mut buf = [0u8; 65_535];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("timeout");
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => answers.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    answers
}

/// The next datagram received within `limit`, if any.
pub fn collect_one(socket: &UdpSocket, limit: Duration) -> Option<String> {
    let mut buf = [0u8; 65_535];
    socket.set_read_timeout(Some(limit.max(Duration::from_millis(1)))).expect("timeout");
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The status code of a response's first line.
pub fn status_of(response: &str) -> Option<u16> {
    let mut parts = response.split_whitespace();
    (parts.next()? == "SIP/2.0").then_some(())?;
    parts.next()?.parse().ok()
}

/// The value of the first header called `name` (case-insensitive).
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The first final (>= 200) status among `answers`.
pub fn final_status(answers: &[String]) -> Option<u16> {
    answers.iter().filter_map(|a| status_of(a)).find(|s| *s >= 200)
}

/// Replaces the sent-by (host and optional port) of the top Via of a raw SIP message with
/// `sent_by`, leaving every other byte as it was: RFC 4475's messages name hosts such as
/// 192.0.2.2, and the answer must come back to the test's socket (RFC 3261 §18.2.2: responses go
/// to the top Via's sent-by). Copes with what the torture messages do to Via: the compact form
/// `v:`, whitespace before the colon, `SIP / 2.0 / UDP` with spaces and folded lines, IPv6
/// references. Returns `None` when the message has no top Via it can read (it is then sent as is).
pub fn rewrite_top_via_sent_by(message: &[u8], sent_by: &str) -> Option<Vec<u8>> {
    let (start, end) = top_via_sent_by_span(message)?;
    let mut out = Vec::with_capacity(message.len() + sent_by.len());
    out.extend_from_slice(message.get(..start)?);
    out.extend_from_slice(sent_by.as_bytes());
    out.extend_from_slice(message.get(end..)?);
    Some(out)
}

/// Byte range of the top Via's sent-by.
fn top_via_sent_by_span(message: &[u8]) -> Option<(usize, usize)> {
    let mut line_start = message.iter().position(|&b| b == b'\n')? + 1; // skip the start line
    loop {
        let line_end = message.get(line_start..)?.iter().position(|&b| b == b'\n').map(|i| line_start + i)?;
        let line = message.get(line_start..line_end)?;
        if line.is_empty() || line == b"\r" {
            return None; // end of the header section: no Via
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = line.get(..colon)?.trim_ascii_end();
            if name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v") {
                return sent_by_span(message, line_start + colon + 1);
            }
        }
        line_start = line_end + 1;
    }
}

/// Parses `protocol-name SLASH version SLASH transport LWS sent-by` from `pos`.
fn sent_by_span(message: &[u8], mut pos: usize) -> Option<(usize, usize)> {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b);
    for part in 0..3 {
        pos = skip_lws(message, pos);
        let token_start = pos;
        while message.get(pos).is_some_and(|&b| is_token(b)) {
            pos += 1;
        }
        if pos == token_start {
            return None;
        }
        pos = skip_lws(message, pos);
        if part < 2 {
            (message.get(pos) == Some(&b'/')).then_some(())?;
            pos += 1;
        }
    }
    let start = pos;
    if message.get(pos) == Some(&b'[') {
        pos += message.get(pos..)?.iter().position(|&b| b == b']')? + 1;
    }
    while message.get(pos).is_some_and(|&b| !b";, \t\r\n".contains(&b)) {
        pos += 1;
    }
    (pos > start).then_some((start, pos))
}

/// Skips linear white space, including a line fold (CRLF followed by a space or tab).
fn skip_lws(message: &[u8], mut pos: usize) -> usize {
    loop {
        match message.get(pos..) {
            Some([b' ' | b'\t', ..]) => pos += 1,
            Some([b'\r', b'\n', b' ' | b'\t', ..]) => pos += 3,
            Some([b'\n', b' ' | b'\t', ..]) => pos += 2,
            _ => return pos,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_top_via_sent_by;

    fn rewrite(message: &str) -> Option<String> {
        rewrite_top_via_sent_by(message.as_bytes(), "127.0.0.1:4000").map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn plain_via_gets_the_new_sent_by_and_keeps_its_parameters() {
        let m =
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP x\r\n\r\n";
        assert_eq!(
            rewrite(m).unwrap(),
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:4000;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP x\r\n\r\n"
        );
    }

    #[test]
    fn compact_folded_and_spaced_vias_are_found() {
        // RFC 4475 §3.1.1.1 (wsinv): whitespace before the colon, spaces and a fold inside.
        let m = "INVITE sip:a@b SIP/2.0\r\nTO :\r\n x\r\nvia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\r\n";
        assert_eq!(
            rewrite(m).unwrap(),
            "INVITE sip:a@b SIP/2.0\r\nTO :\r\n x\r\nvia  : SIP  /   2.0\r\n /UDP\r\n    127.0.0.1:4000;branch=390skdjuw\r\n\r\n"
        );
        let compact = "OPTIONS sip:a@b SIP/2.0\r\nv:SIP/2.0/TCP [2001:db8::9:1]:5070;branch=z\r\n\r\n";
        assert_eq!(
            rewrite(compact).unwrap(),
            "OPTIONS sip:a@b SIP/2.0\r\nv:SIP/2.0/TCP 127.0.0.1:4000;branch=z\r\n\r\n"
        );
    }

    #[test]
    fn a_message_without_a_readable_via_is_left_alone() {
        assert_eq!(rewrite("OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n\r\nVia: SIP/2.0/UDP a\r\n"), None);
        assert_eq!(rewrite("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0 UDP a\r\n\r\n"), None);
    }
}
