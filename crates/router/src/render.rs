//! Placeholders in an agent's `instructions` and `greeting`, filled per call.
//!
//! - `{caller}`, `{dialled}`, `{agent}`, `{call_id}`: the call's facts;
//! - `{header.NAME}`: the value of the INVITE's header NAME, when NAME is one of the captured
//!   headers (`[routing] headers`), else empty;
//! - `{{name}}`: a variable of an outbound call request (`POST /v1/calls` `variables`); left as
//!   written when the request gives no such variable (and on inbound calls).
//!
//! Any other `{word}` is an unknown placeholder: [`unknown_placeholders`] lets the configuration
//! refuse it at load time; should one reach [`render`] it is left as written. Braces that do not
//! enclose a placeholder name (`{"a": 1}`, `{ x }`) are plain text. Values are inserted once, as
//! plain text: a value containing `{caller}` is not expanded again.

use std::collections::BTreeMap;

/// One placeholder found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder<'a> {
    Caller,
    Dialled,
    Agent,
    CallId,
    /// `{header.NAME}`.
    Header(&'a str),
    /// `{{name}}`.
    Variable(&'a str),
    /// `{something}` the renderer does not know.
    Unknown(&'a str),
}

/// The values one call fills in.
#[derive(Debug, Clone, Copy)]
pub struct Values<'a> {
    pub caller: &'a str,
    pub dialled: &'a str,
    pub agent: &'a str,
    pub call_id: &'a str,
    /// The captured headers (name, value); names compare case-insensitively.
    pub headers: &'a [(String, String)],
    pub variables: &'a BTreeMap<String, String>,
}

enum Piece<'a> {
    Text(&'a str),
    /// The placeholder and its text as written (for leaving it verbatim).
    Placeholder(Placeholder<'a>, &'a str),
}

/// Iterates over `text` as literal text and placeholders.
fn pieces(text: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut search_from = 0;
        loop {
            let Some(open) = rest.get(search_from..).and_then(|r| r.find('{')).map(|i| i + search_from) else {
                let text = rest;
                rest = "";
                return Some(Piece::Text(text));
            };
            if open > 0 {
                let (text, tail) = rest.split_at(open);
                rest = tail;
                return Some(Piece::Text(text));
            }
            if let Some((placeholder, len)) = placeholder_at(rest) {
                let (written, tail) = rest.split_at(len);
                rest = tail;
                return Some(Piece::Placeholder(placeholder, written));
            }
            // A brace that opens no placeholder is text; look for the next one.
            search_from = 1;
        }
    })
}

/// The placeholder `text` starts with (it starts with `{`) and its length in bytes.
fn placeholder_at(text: &str) -> Option<(Placeholder<'_>, usize)> {
    let variable_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if let Some(inner) = text.strip_prefix("{{") {
        let end = inner.find("}}")?;
        let name = inner.get(..end)?;
        if !name.is_empty() && name.chars().all(variable_name) {
            return Some((Placeholder::Variable(name), end + 4));
        }
        return None;
    }
    let inner = text.strip_prefix('{')?;
    let end = inner.find('}')?;
    let name = inner.get(..end)?;
    // Header names are RFC 3261 §25.1 tokens; plain names are identifiers.
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return None;
    }
    let placeholder = match name {
        "caller" => Placeholder::Caller,
        "dialled" => Placeholder::Dialled,
        "agent" => Placeholder::Agent,
        "call_id" => Placeholder::CallId,
        _ => match name.strip_prefix("header.") {
            Some(header) if !header.is_empty() => Placeholder::Header(header),
            _ => Placeholder::Unknown(name),
        },
    };
    Some((placeholder, end + 2))
}

/// Every placeholder in `text`, in order.
pub fn placeholders(text: &str) -> impl Iterator<Item = Placeholder<'_>> {
    pieces(text).filter_map(|piece| match piece {
        Piece::Placeholder(placeholder, _) => Some(placeholder),
        Piece::Text(_) => None,
    })
}

/// The unknown placeholders in `text`, as written (`{colour}`), for the configuration check.
pub fn unknown_placeholders(text: &str) -> Vec<&str> {
    pieces(text)
        .filter_map(|piece| match piece {
            Piece::Placeholder(Placeholder::Unknown(_), written) => Some(written),
            _ => None,
        })
        .collect()
}

/// Every placeholder in `text` as written (`{queue}`, `{{name}}`), in order.
pub fn written_placeholders(text: &str) -> impl Iterator<Item = &str> {
    pieces(text).filter_map(|piece| match piece {
        Piece::Placeholder(_, written) => Some(written),
        Piece::Text(_) => None,
    })
}

/// `text` with each placeholder written as `{name}` filled by `value_of(name)`, in one pass (a
/// value is never expanded again); a placeholder with no value is left as written. For other
/// templates than an agent's (a transfer's headers), with their own names.
pub fn fill<'v>(text: &str, value_of: impl Fn(&str) -> Option<&'v str>) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(_, written) => {
                let name = written.strip_prefix('{').and_then(|w| w.strip_suffix('}')).unwrap_or(written);
                out.push_str(value_of(name).unwrap_or(written));
            }
        }
    }
    out
}

/// `text` with its placeholders filled from `values`.
pub fn render(text: &str, values: &Values<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(placeholder, written) => match placeholder {
                Placeholder::Caller => out.push_str(values.caller),
                Placeholder::Dialled => out.push_str(values.dialled),
                Placeholder::Agent => out.push_str(values.agent),
                Placeholder::CallId => out.push_str(values.call_id),
                Placeholder::Header(name) => {
                    if let Some((_, value)) = values.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                        out.push_str(value);
                    }
                }
                Placeholder::Variable(name) => out.push_str(values.variables.get(name).map_or(written, String::as_str)),
                Placeholder::Unknown(_) => out.push_str(written),
            },
        }
    }
    out
}
