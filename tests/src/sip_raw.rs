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
