//! SIP message model, parser and serializer (RFC 3261 §7, §20, §25).
//!
//! The parser is deliberately strict about what it cannot interpret (non-UTF-8 header lines,
//! malformed `Content-Length`, missing mandatory headers) and lenient about whitespace and case.
//! When a message is malformed it still returns what it could salvage so that the endpoint can
//! answer `400 Bad Request` with a reason instead of silently dropping the message.

use std::fmt;

use crate::Transport;

/// A SIP request method (RFC 3261 §7.1). Methods are case-sensitive tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Subscribe,
    Notify,
    Message,
    Publish,
    Refer,
    Info,
    Update,
    Prack,
    /// Any other token: parses fine so the endpoint can answer 501 (RFC 3261 §8.2.1).
    Other(String),
}

impl Method {
    /// Parses a method token; unknown tokens become [`Method::Other`].
    pub fn from_token(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            "REFER" => Method::Refer,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            other => Method::Other(other.to_string()),
        }
    }

    /// The method token as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Refer => "REFER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Other(s) => s,
        }
    }

    /// Metric label: the method for known methods, `other` otherwise (bounded cardinality).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Refer => "REFER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Other(_) => "other",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// First line of a SIP message (RFC 3261 §7.1, §7.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// One header field. `name` is the canonical full name (compact forms expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A parsed SIP message. Headers keep their order; multi-valued Via/Route/Record-Route/Contact
/// lines are split into one entry per value (RFC 3261 §7.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// What was wrong with a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("empty message")]
    Empty,
    #[error("no blank line after the headers")]
    UnterminatedHeaders,
    #[error("non-UTF-8 start line")]
    NonUtf8StartLine,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported SIP version")]
    UnsupportedVersion,
    #[error("non-UTF-8 header line {0}")]
    NonUtf8Header(usize),
    #[error("malformed header line {0}")]
    MalformedHeader(usize),
    #[error("continuation line before any header")]
    OrphanContinuation,
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("missing Content-Length")]
    MissingContentLength,
    #[error("Content-Length larger than the message")]
    ContentLengthTooLarge,
    #[error("missing {0}")]
    MissingHeader(&'static str),
    #[error("malformed {0}")]
    MalformedValue(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
}

/// A parse failure plus whatever part of the message could still be read, so that a
/// `400 Bad Request` can be built from it when enough headers survived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub partial: Option<Box<Message>>,
}

impl ParseError {
    fn bare(kind: ParseErrorKind) -> ParseError {
        ParseError { kind, partial: None }
    }
}

/// RFC 3261 §7.3.3 compact forms plus common extension compact forms.
fn expand_compact(name: &str) -> Option<&'static str> {
    if name.len() != 1 {
        return None;
    }
    Some(match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'f' => "From",
        b't' => "To",
        b'v' => "Via",
        b'm' => "Contact",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'k' => "Supported",
        b's' => "Subject",
        b'e' => "Content-Encoding",
        b'o' => "Event",
        b'r' => "Refer-To",
        b'b' => "Referred-By",
        b'u' => "Allow-Events",
        b'x' => "Session-Expires",
        b'a' => "Accept-Contact",
        b'j' => "Reject-Contact",
        b'd' => "Request-Disposition",
        b'y' => "Identity",
        b'n' => "Identity-Info",
        _ => return None,
    })
}

const CANONICAL_NAMES: &[&str] = &[
    "Accept",
    "Allow",
    "Call-ID",
    "Contact",
    "Content-Length",
    "Content-Type",
    "CSeq",
    "From",
    "Max-Forwards",
    "Record-Route",
    "Require",
    "Route",
    "Server",
    "Supported",
    "To",
    "Unsupported",
    "User-Agent",
    "Via",
    "Retry-After",
    "Proxy-Require",
    "Session-Expires",
    "Min-SE",
    "Reason",
    "WWW-Authenticate",
];

/// Canonical header name: compact forms expanded, known names in their RFC spelling,
/// unknown names kept as received (comparisons are case-insensitive anyway).
pub fn canonical_name(name: &str) -> String {
    if let Some(full) = expand_compact(name) {
        return full.to_string();
    }
    CANONICAL_NAMES
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .map(|known| (*known).to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Headers whose comma-separated values are split into separate entries (RFC 3261 §7.3.1).
fn is_multi_value(name: &str) -> bool {
    matches!(name, "Via" | "Route" | "Record-Route" | "Contact")
}

/// RFC 3261 §25.1 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// Splits on commas that are outside `<...>` and quoted strings.
pub fn split_top_level_commas(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth_angle = false;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, ch) in value.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_quotes = false;
            }
            continue;
        }
        match ch {
            '"' => in_quotes = true,
            '<' => depth_angle = true,
            '>' => depth_angle = false,
            ',' if !depth_angle => {
                parts.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(value[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Where the header section ends: index of the blank line and the start of the body.
/// Accepts CRLF CRLF and, leniently, LF LF.
pub(crate) fn find_header_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\n' {
            if bytes.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if bytes.get(i + 1) == Some(&b'\r') && bytes.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Counts header lines (including continuations) without parsing; used as a guard.
pub(crate) fn count_lines(bytes: &[u8]) -> usize {
    let end = find_header_end(bytes).map_or(bytes.len(), |(e, _)| e);
    bytes[..end].iter().filter(|b| **b == b'\n').count()
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Parses one complete SIP message (RFC 3261 §7). On UDP a missing `Content-Length` means the
/// body runs to the end of the datagram (§18.3); on TCP it is required (the framer enforces it).
pub fn parse_message(bytes: &[u8], transport: Transport) -> Result<Message, ParseError> {
    // Keep-alive CRLFs before a message are allowed (RFC 5626 §3.5.1).
    let leading = bytes.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    let bytes = &bytes[leading..];
    if bytes.is_empty() {
        return Err(ParseError::bare(ParseErrorKind::Empty));
    }
    let (head_end, body_start) = match find_header_end(bytes) {
        Some(found) => found,
        None => {
            // A datagram may legitimately end right after the last header's CRLF.
            if bytes.ends_with(b"\n") {
                (bytes.len() - 1, bytes.len())
            } else {
                return Err(ParseError::bare(ParseErrorKind::UnterminatedHeaders));
            }
        }
    };
    let head = &bytes[..head_end];
    let available_body = &bytes[body_start.min(bytes.len())..];

    let mut lines = head.split(|b| *b == b'\n').map(strip_cr);
    let first = lines.next().unwrap_or_default();
    let first = std::str::from_utf8(first).map_err(|_| ParseError::bare(ParseErrorKind::NonUtf8StartLine))?;
    // A request whose line is broken in the middle (a bad Request-URI) still has headers
    // good enough to answer 400 with (RFC 3261 §21.4.1), so keep parsing it.
    let (start, mut first_error) = match parse_start_line(first) {
        Ok(start) => (start, None),
        Err(kind) => match salvage_request_line(first) {
            Some(start) => (start, Some(kind)),
            None => return Err(ParseError::bare(kind)),
        },
    };
    // RFC 3261 §7.3.1: unfold continuation lines first (a header name may even be followed by
    // its colon on the next line), then split each logical line into name and value.
    let mut logical: Vec<(usize, String)> = Vec::new();
    for (index, line) in lines.enumerate() {
        let line_no = index + 2;
        let Ok(text) = std::str::from_utf8(line) else {
            first_error.get_or_insert(ParseErrorKind::NonUtf8Header(line_no));
            continue;
        };
        if text.starts_with([' ', '\t']) {
            match logical.last_mut() {
                Some((_, joined)) => {
                    let cont = text.trim();
                    if !cont.is_empty() {
                        joined.push(' ');
                        joined.push_str(cont);
                    }
                }
                None => {
                    first_error.get_or_insert(ParseErrorKind::OrphanContinuation);
                }
            }
            continue;
        }
        if !text.is_empty() {
            logical.push((line_no, text.trim_end().to_string()));
        }
    }
    let mut raw: Vec<(String, String)> = Vec::with_capacity(logical.len());
    for (line_no, text) in logical {
        let Some((name, value)) = text.split_once(':') else {
            first_error.get_or_insert(ParseErrorKind::MalformedHeader(line_no));
            continue;
        };
        let name = name.trim();
        if !is_token(name) {
            first_error.get_or_insert(ParseErrorKind::MalformedHeader(line_no));
            continue;
        }
        raw.push((canonical_name(name), value.trim().to_string()));
    }

    let mut headers = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if is_multi_value(&name) {
            for part in split_top_level_commas(&value) {
                headers.push(Header { name: name.clone(), value: part.to_string() });
            }
        } else {
            headers.push(Header { name, value });
        }
    }

    let mut message = Message { start, headers, body: Vec::new() };

    // RFC 3261 §18.3 / §20.14: Content-Length framing.
    match message.header("Content-Length") {
        Some(value) => match value.trim().parse::<usize>() {
            Ok(length) if length <= available_body.len() => {
                message.body = available_body[..length].to_vec();
            }
            Ok(_) => {
                first_error.get_or_insert(ParseErrorKind::ContentLengthTooLarge);
            }
            Err(_) => {
                first_error.get_or_insert(ParseErrorKind::BadContentLength);
            }
        },
        None => match transport {
            Transport::Udp => message.body = available_body.to_vec(),
            Transport::Tcp => {
                first_error.get_or_insert(ParseErrorKind::MissingContentLength);
            }
        },
    }

    if first_error.is_none() {
        first_error = validate(&message).err();
    }
    match first_error {
        None => Ok(message),
        Some(kind) => Err(ParseError { kind, partial: Some(Box::new(message)) }),
    }
}

/// Mandatory headers and their basic shape (RFC 3261 §8.1.1, §8.2.1).
fn validate(message: &Message) -> Result<(), ParseErrorKind> {
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if message.header(name).is_none() {
            return Err(ParseErrorKind::MissingHeader(name));
        }
    }
    if message.header_values("Via").any(|v| Via::parse(v).is_none()) {
        return Err(ParseErrorKind::MalformedValue("Via"));
    }
    let Some((_, cseq_method)) = message.cseq() else {
        return Err(ParseErrorKind::MalformedValue("CSeq"));
    };
    if message.from().is_none() {
        return Err(ParseErrorKind::MalformedValue("From"));
    }
    if message.to().is_none() {
        return Err(ParseErrorKind::MalformedValue("To"));
    }
    if let Some(max_forwards) = message.header("Max-Forwards")
        && max_forwards.trim().parse::<u8>().is_err()
    {
        return Err(ParseErrorKind::MalformedValue("Max-Forwards"));
    }
    if let StartLine::Request { method, .. } = &message.start
        && *method != cseq_method
    {
        return Err(ParseErrorKind::CSeqMethodMismatch);
    }
    Ok(())
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseErrorKind> {
    let line = line.trim();
    // `get` rather than slicing: the line may hold multi-byte UTF-8 anywhere.
    if let Some(rest) = line.get(..8).filter(|p| p.eq_ignore_ascii_case("SIP/2.0 ")).and(line.get(8..)) {
        let rest = rest.trim_start();
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.parse().map_err(|_| ParseErrorKind::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseErrorKind::BadStartLine);
        }
        return Ok(StartLine::Response { code, reason: reason.trim().to_string() });
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseErrorKind::BadStartLine);
    };
    if !is_token(method) || !uri.contains(':') {
        return Err(ParseErrorKind::BadStartLine);
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        if version.len() > 4 && version.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/")) {
            return Err(ParseErrorKind::UnsupportedVersion);
        }
        return Err(ParseErrorKind::BadStartLine);
    }
    Ok(StartLine::Request { method: Method::from_token(method), uri: uri.to_string() })
}

/// `METHOD <anything> SIP/2.0` where the middle is not one Request-URI: the method and version
/// are clear enough to answer, the URI is kept as written for the log.
fn salvage_request_line(line: &str) -> Option<StartLine> {
    let line = line.trim();
    let (method, rest) = line.split_once(' ')?;
    let (uri, version) = rest.rsplit_once(' ')?;
    (is_token(method) && version.eq_ignore_ascii_case("SIP/2.0"))
        .then(|| StartLine::Request { method: Method::from_token(method), uri: uri.trim().to_string() })
}

impl Message {
    /// Builds a request with no headers yet.
    pub fn request(method: Method, uri: impl Into<String>) -> Message {
        Message { start: StartLine::Request { method, uri: uri.into() }, headers: Vec::new(), body: Vec::new() }
    }

    /// The request method, if this is a request.
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, if this is a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code, if this is a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// First value of a header (case-insensitive name; compact forms accepted).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// All values of a header, in order.
    pub fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name);
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(&name)).map(|h| h.value.as_str())
    }

    /// Appends a header.
    pub fn push_header(&mut self, name: &str, value: impl Into<String>) {
        self.headers.push(Header { name: name.to_string(), value: value.into() });
    }

    /// Removes every value of a header.
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("Call-ID")
    }

    /// CSeq number and method (RFC 3261 §20.16).
    pub fn cseq(&self) -> Option<(u32, Method)> {
        let value = self.header("CSeq")?;
        let mut parts = value.split_whitespace();
        let number = parts.next()?.parse::<u32>().ok()?;
        let method = parts.next()?;
        if parts.next().is_some() || !is_token(method) {
            return None;
        }
        Some((number, Method::from_token(method)))
    }

    /// The top Via (RFC 3261 §8.2.6.2: the one our response goes back to).
    pub fn top_via(&self) -> Option<Via> {
        self.header("Via").and_then(Via::parse)
    }

    /// The parsed From header.
    pub fn from(&self) -> Option<NameAddr> {
        self.header("From").and_then(NameAddr::parse)
    }

    /// The parsed To header.
    pub fn to(&self) -> Option<NameAddr> {
        self.header("To").and_then(NameAddr::parse)
    }

    /// The From tag.
    pub fn from_tag(&self) -> Option<String> {
        self.from().and_then(|f| f.param("tag").map(str::to_string))
    }

    /// The To tag.
    pub fn to_tag(&self) -> Option<String> {
        self.to().and_then(|t| t.param("tag").map(str::to_string))
    }

    /// Serializes the message; `Content-Length` is always rewritten to the body length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                out.push_str(&format!("{method} {uri} SIP/2.0\r\n"));
            }
            StartLine::Response { code, reason } => {
                out.push_str(&format!("SIP/2.0 {code} {reason}\r\n"));
            }
        }
        for header in &self.headers {
            if header.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            out.push_str(&header.name);
            out.push_str(": ");
            out.push_str(&header.value);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Generic `;name=value` parameters.
pub type Params = Vec<(String, Option<String>)>;

fn parse_params(text: &str) -> Params {
    text.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (p.to_string(), None),
        })
        .collect()
}

fn find_param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref().unwrap_or(""))
}

fn write_params(out: &mut String, params: &Params) {
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
}

/// Splits `host[:port]` where host may be an `[IPv6]` reference.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.trim() {
            "" => None,
            p => Some(p.strip_prefix(':')?.trim().parse().ok()?),
        };
        return Some((format!("[{host}]"), port));
    }
    match text.split_once(':') {
        Some((host, port)) => {
            let host = host.trim();
            if host.is_empty() {
                return None;
            }
            Some((host.to_string(), Some(port.trim().parse().ok()?)))
        }
        None => Some((text.to_string(), None)),
    }
}

/// A Via header value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-cased (`UDP`, `TCP`, ...).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses `SIP/2.0/UDP host:port;params`, tolerating whitespace around `/` and `:`.
    pub fn parse(value: &str) -> Option<Via> {
        let value = value.trim();
        // sent-protocol: three slash-separated tokens, whitespace allowed (LWS around SLASH).
        let mut rest = value;
        let mut protocol = Vec::with_capacity(3);
        for i in 0..3 {
            let token_end = rest.find(|c: char| c == '/' || c.is_whitespace()).unwrap_or(rest.len());
            let token = &rest[..token_end];
            if !is_token(token) {
                return None;
            }
            protocol.push(token);
            rest = rest[token_end..].trim_start();
            if i < 2 {
                rest = rest.strip_prefix('/')?.trim_start();
            }
        }
        if !protocol[0].eq_ignore_ascii_case("SIP") || protocol[1] != "2.0" {
            return None;
        }
        let (sent_by, params) = rest.split_once(';').unwrap_or((rest, ""));
        let (host, port) = split_host_port(sent_by)?;
        if host.contains(char::is_whitespace) {
            return None;
        }
        // `;;` or a trailing `;` is not a via-param (RFC 3261 §25.1).
        if rest.contains(';') && params.split(';').any(|p| p.trim().is_empty()) {
            return None;
        }
        Some(Via { transport: protocol[2].to_ascii_uppercase(), host, port, params: parse_params(params) })
    }

    /// A parameter value (`Some("")` for a flag like bare `rport`).
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// Sets (or adds) a parameter.
    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        match self.params.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(entry) => entry.1 = value,
            None => self.params.push((name.to_string(), value)),
        }
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    /// `host:port` as written (port defaulted to 5060) for transaction matching (§17.2.3).
    pub fn sent_by(&self) -> String {
        format!("{}:{}", self.host.to_ascii_lowercase(), self.port.unwrap_or(5060))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = format!("SIP/2.0/{} {}", self.transport, self.host);
        if let Some(port) = self.port {
            out.push_str(&format!(":{port}"));
        }
        write_params(&mut out, &self.params);
        f.write_str(&out)
    }
}

/// A name-addr or addr-spec with header parameters (From, To, Contact, Route; RFC 3261 §20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Params,
}

impl NameAddr {
    /// Parses `"Display" <uri>;params`, `Display <uri>` or `uri;params`.
    pub fn parse(value: &str) -> Option<NameAddr> {
        let value = value.trim();
        if value.is_empty() {
            return None;
        }
        // Find '<' outside a quoted display name.
        let mut in_quotes = false;
        let mut escaped = false;
        let mut open = None;
        for (i, ch) in value.char_indices() {
            if in_quotes {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == '"' {
                    in_quotes = false;
                }
                continue;
            }
            if ch == '"' {
                in_quotes = true;
            } else if ch == '<' {
                open = Some(i);
                break;
            }
        }
        if in_quotes {
            return None;
        }
        match open {
            Some(open) => {
                let display = value[..open].trim();
                let after = &value[open + 1..];
                let close = after.find('>')?;
                let uri = after[..close].trim();
                if uri.is_empty() {
                    return None;
                }
                let display = if display.is_empty() {
                    None
                } else if let Some(quoted) = display.strip_prefix('"').and_then(|d| d.strip_suffix('"')) {
                    Some(unescape_quoted(quoted))
                } else {
                    Some(display.to_string())
                };
                Some(NameAddr { display, uri: uri.to_string(), params: parse_params(&after[close + 1..]) })
            }
            None => {
                // addr-spec: parameters after the URI belong to the header (§20.10).
                let (uri, params) = value.split_once(';').unwrap_or((value, ""));
                let uri = uri.trim();
                if uri.is_empty() || uri.contains(char::is_whitespace) {
                    return None;
                }
                Some(NameAddr { display: None, uri: uri.to_string(), params: parse_params(params) })
            }
        }
    }

    /// A header parameter (e.g. `tag`).
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }
}

fn unescape_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Decodes `%XX` escapes (RFC 3261 §19.1.2); invalid escapes are kept literally.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// A SIP, SIPS or tel URI, reduced to what routing needs (RFC 3261 §19.1, RFC 3966).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// Lower-cased scheme: `sip`, `sips` or `tel`.
    pub scheme: String,
    /// The user part (percent-decoded), or the tel number.
    pub user: Option<String>,
    /// Host (IPv6 in brackets); empty for tel URIs.
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl SipUri {
    /// Parses a URI; `None` when the scheme is unsupported or the host part is malformed.
    pub fn parse(text: &str) -> Option<SipUri> {
        let text = text.trim();
        let (scheme, rest) = text.split_once(':')?;
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "tel" => {
                let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
                Some(SipUri {
                    scheme,
                    user: Some(percent_decode(number)),
                    host: String::new(),
                    port: None,
                    params: parse_params(params),
                })
            }
            "sip" | "sips" => {
                // Headers (`?...`) are irrelevant here.
                let rest = rest.split('?').next().unwrap_or_default();
                let (user, hostpart) = match rest.rfind('@') {
                    Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
                    None => (None, rest),
                };
                let (hostport, params) = hostpart.split_once(';').unwrap_or((hostpart, ""));
                let (host, port) = split_host_port(hostport)?;
                if host.contains(char::is_whitespace) {
                    return None;
                }
                let user = user.map(|u| {
                    // Strip the password (user:password) and user parameters.
                    let u = u.split(':').next().unwrap_or_default();
                    percent_decode(u)
                });
                Some(SipUri { scheme, user, host, port, params: parse_params(params) })
            }
            _ => None,
        }
    }

    /// A URI parameter (e.g. `transport`, `lr`).
    pub fn param(&self, name: &str) -> Option<&str> {
        find_param(&self.params, name)
    }

    /// The host without IPv6 brackets, for resolution.
    pub fn host_unbracketed(&self) -> &str {
        self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(&self.host)
    }
}

/// Result of looking for one message at the front of a TCP stream buffer (RFC 3261 §18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFrame {
    /// More bytes are needed.
    Incomplete,
    /// Keep-alive CRLFs (RFC 5626 §3.5.1) of this length to discard.
    Keepalive(usize),
    /// A message of this length; `then_close` when the framing is unusable after it (missing or
    /// malformed Content-Length): the message is still handed over so a 400 can be sent.
    Message { len: usize, then_close: bool },
    /// The message exceeds the size limit: close the connection.
    TooLarge,
}

/// Frames one message at the front of `buf` by its Content-Length.
pub fn frame_stream(buf: &[u8], max_message_bytes: usize) -> StreamFrame {
    let keepalive = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    if keepalive > 0 {
        return StreamFrame::Keepalive(keepalive);
    }
    let Some((head_end, body_start)) = find_header_end(buf) else {
        return if buf.len() > max_message_bytes { StreamFrame::TooLarge } else { StreamFrame::Incomplete };
    };
    let mut content_length = None;
    for line in buf[..head_end].split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
            content_length = Some(
                std::str::from_utf8(strip_cr(&line[colon + 1..])).ok().and_then(|v| v.trim().parse::<usize>().ok()),
            );
            break;
        }
    }
    match content_length {
        Some(Some(length)) => {
            let total = body_start.saturating_add(length);
            if total > max_message_bytes {
                StreamFrame::TooLarge
            } else if buf.len() < total {
                StreamFrame::Incomplete
            } else {
                StreamFrame::Message { len: total, then_close: false }
            }
        }
        _ => StreamFrame::Message { len: body_start, then_close: true },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_udp(text: &str) -> Result<Message, ParseError> {
        parse_message(text.as_bytes(), Transport::Udp)
    }

    const BASIC_INVITE: &str = "INVITE sip:15550001000@127.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1\r\n\
        Max-Forwards: 70\r\n\
        From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
        To: <sip:15550001000@127.0.0.1:5060>\r\n\
        Call-ID: call-1@host\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:alice@127.0.0.1:5061>\r\n\
        Content-Type: application/sdp\r\n\
        Content-Length: 4\r\n\r\nv=0\n";

    #[test]
    fn parses_basic_invite() {
        let m = parse_udp(BASIC_INVITE).unwrap();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.request_uri(), Some("sip:15550001000@127.0.0.1:5060"));
        assert_eq!(m.call_id(), Some("call-1@host"));
        assert_eq!(m.cseq(), Some((1, Method::Invite)));
        assert_eq!(m.from_tag().as_deref(), Some("a1"));
        assert_eq!(m.from().unwrap().display.as_deref(), Some("Alice"));
        assert_eq!(m.to_tag(), None);
        assert_eq!(m.body, b"v=0\n");
        let via = m.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK-1"));
        assert_eq!(via.sent_by(), "127.0.0.1:5061");
    }

    #[test]
    fn compact_forms_are_expanded() {
        let text = "OPTIONS sip:x@h SIP/2.0\r\nv: SIP/2.0/TCP h:5;branch=z9hG4bKa\r\n\
            f: <sip:a@h>;tag=1\r\nt: <sip:x@h>\r\ni: cid\r\nCSeq: 2 OPTIONS\r\n\
            m: <sip:a@h>\r\nc: text/plain\r\nk: timer\r\ns: hi\r\nl: 0\r\n\r\n";
        let m = parse_udp(text).unwrap();
        assert_eq!(m.call_id(), Some("cid"));
        assert_eq!(m.header("Contact"), Some("<sip:a@h>"));
        assert_eq!(m.header("content-type"), Some("text/plain"));
        assert_eq!(m.header("Supported"), Some("timer"));
        assert_eq!(m.header("Subject"), Some("hi"));
        assert!(m.headers.iter().any(|h| h.name == "Call-ID"));
        assert!(m.headers.iter().any(|h| h.name == "Via"));
    }

    #[test]
    fn folded_header_is_joined() {
        let text = "OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 2 OPTIONS\r\n\
            Subject: first\r\n   second\r\n\tthird\r\nl: 0\r\n\r\n";
        let m = parse_udp(text).unwrap();
        assert_eq!(m.header("Subject"), Some("first second third"));
    }

    #[test]
    fn multi_value_via_and_record_route_split() {
        let text = "OPTIONS sip:x@h SIP/2.0\r\n\
            Via: SIP/2.0/UDP a:1;branch=z9hG4bKa, SIP/2.0/UDP b:2;branch=z9hG4bKb\r\n\
            v: SIP/2.0/UDP c:3;branch=z9hG4bKc\r\n\
            Record-Route: <sip:p1;lr>, \"a,b\" <sip:p2;lr>\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 2 OPTIONS\r\n\r\n";
        let m = parse_udp(text).unwrap();
        let vias: Vec<_> = m.header_values("Via").collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(m.top_via().unwrap().host, "a");
        let rr: Vec<_> = m.header_values("Record-Route").collect();
        assert_eq!(rr, vec!["<sip:p1;lr>", "\"a,b\" <sip:p2;lr>"]);
    }

    #[test]
    fn missing_content_length_on_udp_takes_rest_of_datagram() {
        let text = "INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 1 INVITE\r\n\r\n\
            v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n";
        let m = parse_udp(text).unwrap();
        assert_eq!(m.body, b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\n");
        let err = parse_message(text.as_bytes(), Transport::Tcp).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::MissingContentLength);
    }

    #[test]
    fn bad_content_length_is_rejected_with_salvage() {
        let base = "INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 1 INVITE\r\n";
        let err = parse_udp(&format!("{base}Content-Length: abc\r\n\r\nv=0")).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::BadContentLength);
        assert_eq!(err.partial.unwrap().call_id(), Some("cid"));
        let err = parse_udp(&format!("{base}Content-Length: 9999\r\n\r\nv=0")).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::ContentLengthTooLarge);
        let err = parse_udp(&format!("{base}Content-Length: -1\r\n\r\n")).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::BadContentLength);
        // Extra bytes beyond Content-Length are ignored (§18.3).
        let m = parse_udp(&format!("{base}Content-Length: 2\r\n\r\nv=0")).unwrap();
        assert_eq!(m.body, b"v=");
    }

    #[test]
    fn broken_request_uri_keeps_the_headers_for_a_400() {
        let text = "INVITE not a uri SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let err = parse_udp(text).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::BadStartLine);
        let partial = err.partial.unwrap();
        assert_eq!(partial.method(), Some(&Method::Invite));
        assert_eq!(partial.call_id(), Some("cid"));
        // Not a request line at all: nothing to answer.
        assert!(parse_udp("HELLO\r\nCall-ID: x\r\n\r\n").unwrap_err().partial.is_none());
    }

    #[test]
    fn non_utf8_header_is_an_error_not_a_silent_drop() {
        let mut bytes = b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            Subject: \xff\xfe\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\n"
            .to_vec();
        bytes.extend_from_slice(b"CSeq: 1 OPTIONS\r\n\r\n");
        let err = parse_message(&bytes, Transport::Udp).unwrap_err();
        assert_eq!(err.kind, ParseErrorKind::NonUtf8Header(3));
        // Headers after the bad line are still there for the 400.
        let partial = err.partial.unwrap();
        assert_eq!(partial.call_id(), Some("cid"));
        assert_eq!(partial.cseq(), Some((1, Method::Options)));
    }

    #[test]
    fn unknown_method_parses() {
        let text = "NEWMETHOD sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: cid\r\nCSeq: 1 NEWMETHOD\r\n\r\n";
        let m = parse_udp(text).unwrap();
        assert_eq!(m.method(), Some(&Method::Other("NEWMETHOD".into())));
        assert_eq!(m.method().unwrap().metric_label(), "other");
    }

    #[test]
    fn missing_call_id_and_cseq_mismatch() {
        let text = "OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(parse_udp(text).unwrap_err().kind, ParseErrorKind::MissingHeader("Call-ID"));
        let text = "OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\
            From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
        assert_eq!(parse_udp(text).unwrap_err().kind, ParseErrorKind::CSeqMethodMismatch);
    }

    /// Regression: multi-byte UTF-8 where the parser once sliced by byte position panicked the
    /// endpoint's driver task.
    #[test]
    fn multi_byte_utf8_in_start_line_is_an_error_not_a_panic() {
        for line in [
            "INVITE é sip:x@host SIP/2.0",
            "SIP/2.é 200 OK",
            "SIPé/2.0 200 OK",
            "INVITE sip:x@h SIé/2.0",
            "INVITE sip:x@h SIP/é",
        ] {
            let text = format!("{line}\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\r\n");
            assert!(parse_udp(&text).is_err(), "{line}");
        }
    }

    #[test]
    fn version_and_start_line_errors() {
        let text = "INVITE sip:x@h SIP/7.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKa\r\n\r\n";
        assert_eq!(parse_udp(text).unwrap_err().kind, ParseErrorKind::UnsupportedVersion);
        assert_eq!(parse_udp("INVITE\r\n\r\n").unwrap_err().kind, ParseErrorKind::BadStartLine);
    }

    #[test]
    fn odd_whitespace_request_line_and_via() {
        let text = "INVITE   sip:vivekg@chair-dnrc.example.com;unknownparam   SIP/2.0\r\n\
            Via  :  SIP / 2.0\r\n  /UDP   192.0.2.2 : 5060 ;branch=z9hG4bKkdjuw\r\n\
            TO :\r\n <sip:vivekg@chair-dnrc.example.com> ;   tag    = 1918181833n\r\n\
            from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n\
            Call-ID\r\n : 0ha0isndaksdj@192.0.2.1\r\n\
            cseq: 0009\r\n  INVITE\r\nMax-Forwards: 68\r\nl: 0\r\n\r\n";
        let m = parse_udp(text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(m.request_uri(), Some("sip:vivekg@chair-dnrc.example.com;unknownparam"));
        let via = m.top_via().unwrap();
        assert_eq!(via.host, "192.0.2.2");
        assert_eq!(via.port, Some(5060));
        assert_eq!(m.to_tag().as_deref(), Some("1918181833n"));
        assert_eq!(m.from_tag().as_deref(), Some("98asjd8"));
        assert_eq!(m.from().unwrap().display.as_deref(), Some("J Rosenberg \\\""));
        assert_eq!(m.cseq(), Some((9, Method::Invite)));
    }

    #[test]
    fn uris() {
        let u = SipUri::parse("sip:%2B1555@[::1]:5070;transport=tcp;lr").unwrap();
        assert_eq!(u.user.as_deref(), Some("+1555"));
        assert_eq!(u.host, "[::1]");
        assert_eq!(u.host_unbracketed(), "::1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some("tcp"));
        assert_eq!(u.param("lr"), Some(""));
        let t = SipUri::parse("tel:+15550001000;phone-context=x").unwrap();
        assert_eq!(t.user.as_deref(), Some("+15550001000"));
        assert!(SipUri::parse("http://x").is_none());
        assert!(SipUri::parse("sip:a@[::1").is_none());
    }

    #[test]
    fn serialization_round_trips() {
        let m = parse_udp(BASIC_INVITE).unwrap();
        let again = parse_udp(std::str::from_utf8(&m.to_bytes()).unwrap()).unwrap();
        assert_eq!(m, again);
    }

    fn vector(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
    }

    fn kind_of(name: &str) -> Result<Message, ParseErrorKind> {
        parse_message(&vector(name), Transport::Udp).map_err(|e| e.kind)
    }

    /// RFC 4475-style vectors in `testdata/` with the outcome each must have.
    #[test]
    fn torture_vectors_have_expected_outcomes() {
        let m = kind_of("wsinv.sip").unwrap();
        assert_eq!(m.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
        assert_eq!(m.header_values("Via").count(), 3);
        assert_eq!(m.cseq(), Some((9, Method::Invite)));
        assert_eq!(m.header("Max-Forwards"), Some("0068"));
        assert_eq!(m.to_tag().as_deref(), Some("1918181833n"));
        assert_eq!(m.header("NewFangledHeader"), Some("newfangled value continued newfangled value"));
        assert_eq!(m.body.len(), 150);
        let contact = NameAddr::parse(m.header("Contact").unwrap()).unwrap();
        assert_eq!(contact.uri, "sip:jdrosen@example.com");

        let m = kind_of("esc01.sip").unwrap();
        let uri = SipUri::parse(m.request_uri().unwrap()).unwrap();
        assert_eq!(uri.user.as_deref(), Some("sips:user@example.com"));
        assert_eq!(uri.host, "example.net");

        let m = kind_of("longreq.sip").unwrap();
        assert_eq!(m.header_values("Via").count(), 30);
        assert!(m.from().unwrap().uri.len() > 200);

        let m = kind_of("ipv6-via.sip").unwrap();
        assert_eq!(m.top_via().unwrap().host, "[2001:db8::9:1]");
        let m = kind_of("tel-uri.sip").unwrap();
        assert_eq!(SipUri::parse(m.request_uri().unwrap()).unwrap().user.as_deref(), Some("+15550001000"));
        assert!(m.body.starts_with(b"v=0"), "no Content-Length: body to end of datagram");
        let m = kind_of("unknown-method.sip").unwrap();
        assert_eq!(m.method(), Some(&Method::Other("NEWMETHOD".into())));
        assert!(kind_of("unkscm.sip").is_ok());
        assert!(kind_of("novelsc.sip").is_ok());

        assert_eq!(kind_of("ncl.sip").unwrap_err(), ParseErrorKind::BadContentLength);
        assert_eq!(kind_of("clerr.sip").unwrap_err(), ParseErrorKind::ContentLengthTooLarge);
        assert_eq!(kind_of("scalar02.sip").unwrap_err(), ParseErrorKind::MalformedValue("CSeq"));
        assert_eq!(kind_of("badinv01.sip").unwrap_err(), ParseErrorKind::MalformedValue("Via"));
        assert_eq!(kind_of("badvers.sip").unwrap_err(), ParseErrorKind::UnsupportedVersion);
        assert_eq!(kind_of("non-utf8-header.sip").unwrap_err(), ParseErrorKind::NonUtf8Header(3));
    }

    /// Property: whatever parses, serializes to something that parses back to the same message.
    #[test]
    fn parsed_messages_round_trip_under_mutation() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut parsed = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let original = std::fs::read(entry.unwrap().path()).unwrap();
            for _ in 0..300 {
                let mut bytes = original.clone();
                let at = rng.random_range(0..bytes.len());
                match rng.random_range(0..3) {
                    0 => bytes[at] = rng.random(),
                    1 => {
                        bytes.remove(at);
                    }
                    _ => {
                        let specials = b" ;:,<>\"\r\n";
                        bytes.insert(at, specials[rng.random_range(0..specials.len())]);
                    }
                }
                if let Ok(m) = parse_message(&bytes, Transport::Udp) {
                    parsed += 1;
                    let mut again = parse_message(&m.to_bytes(), Transport::Udp)
                        .unwrap_or_else(|e| panic!("reparse failed: {e:?}"));
                    // The serializer always writes Content-Length last.
                    let mut m = m;
                    m.remove_header("Content-Length");
                    again.remove_header("Content-Length");
                    assert_eq!(again, m);
                }
            }
        }
        assert!(parsed > 100, "mutations should mostly still parse ({parsed})");
    }

    #[test]
    fn stream_framing() {
        let msg = b"OPTIONS sip:x@h SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(frame_stream(b"\r\n\r\nOPT", 100), StreamFrame::Keepalive(4));
        assert_eq!(frame_stream(&msg[..20], 100), StreamFrame::Incomplete);
        assert_eq!(frame_stream(msg, 100), StreamFrame::Message { len: msg.len() - 4, then_close: false });
        assert_eq!(frame_stream(&msg[..msg.len() - 5], 100), StreamFrame::Incomplete);
        assert_eq!(frame_stream(msg, 20), StreamFrame::TooLarge);
        let no_length = b"OPTIONS sip:x@h SIP/2.0\r\nVia: x\r\n\r\n";
        assert_eq!(frame_stream(no_length, 100), StreamFrame::Message { len: no_length.len(), then_close: true });
        assert_eq!(frame_stream(&[b'A'; 200], 100), StreamFrame::TooLarge);
    }

    #[test]
    fn via_display_keeps_params() {
        let mut via = Via::parse("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport").unwrap();
        via.set_param("rport", Some("4000".into()));
        via.set_param("received", Some("192.0.2.9".into()));
        assert_eq!(via.to_string(), "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;rport=4000;received=192.0.2.9");
    }
}
