//! Number patterns for `dialled` and `caller`: an exact number, a prefix ending in `*`, or a
//! `/regex/`.

use std::fmt;

/// Patterns compiled from a config longer than this are refused (a regex is compiled once, at
/// load time, but its automaton must stay small).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub enum NumberPattern {
    /// `*`: every number, including none.
    Any,
    /// An exact number; a leading `+` is ignored on both sides.
    Exact(String),
    /// Numbers starting with these digits (`+` ignored on both sides as for [`NumberPattern::Exact`]).
    Prefix(String),
    /// `/…/`: a regular expression (the `regex` crate's syntax) matched against the whole number
    /// as received (anchored at both ends, `+` included when the number has one).
    Regex { source: String, regex: regex::Regex },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("an empty pattern (use `*` for any number)")]
    Empty,
    #[error("`{0}`: `*` may only end a prefix")]
    MisplacedStar(String),
    #[error("`{pattern}` is not a valid regular expression: {reason}")]
    BadRegex { pattern: String, reason: String },
}

impl NumberPattern {
    pub fn parse(text: &str) -> Result<NumberPattern, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if let Some(inner) = text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
            if inner.is_empty() {
                return Err(PatternError::Empty);
            }
            // Anchored: `/1555.*/` must not match a number that merely contains 1555.
            let regex = regex::RegexBuilder::new(&format!("^(?:{inner})$"))
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| PatternError::BadRegex { pattern: text.to_string(), reason: e.to_string() })?;
            return Ok(NumberPattern::Regex { source: text.to_string(), regex });
        }
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        match unsigned.strip_suffix('*') {
            Some(prefix) if prefix.contains('*') => Err(PatternError::MisplacedStar(text.to_string())),
            Some("") => Ok(NumberPattern::Any),
            Some(prefix) => Ok(NumberPattern::Prefix(prefix.to_string())),
            None if unsigned.contains('*') => Err(PatternError::MisplacedStar(text.to_string())),
            None => Ok(NumberPattern::Exact(unsigned.to_string())),
        }
    }

    pub fn matches(&self, number: &str) -> bool {
        let unsigned = number.strip_prefix('+').unwrap_or(number);
        match self {
            NumberPattern::Any => true,
            NumberPattern::Exact(exact) => unsigned == exact,
            NumberPattern::Prefix(prefix) => unsigned.starts_with(prefix.as_str()),
            NumberPattern::Regex { regex, .. } => regex.is_match(number),
        }
    }
}

impl fmt::Display for NumberPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NumberPattern::Any => f.write_str("*"),
            NumberPattern::Exact(exact) => f.write_str(exact),
            NumberPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            NumberPattern::Regex { source, .. } => f.write_str(source),
        }
    }
}
