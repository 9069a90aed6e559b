//! `hours`: when a route applies, as weekday and wall-clock spans in a time zone.
//!
//! Syntax: comma-separated spans, each `DAYS HH:MM-HH:MM`, `DAYS` alone (the whole day) or
//! `HH:MM-HH:MM` alone (every day). `DAYS` is one day (`mon`) or a range (`mon-fri`, `fri-mon`
//! wraps over the week end). The start is included, the end excluded; `24:00` ends a span at
//! midnight. An end before the start runs over midnight: `fri 22:00-06:00` is Friday 22:00 to
//! Saturday 06:00 (the days name where the span starts). Times are wall-clock times in the
//! route's zone, so a span keeps its local hours across a DST change.

use std::fmt;

use jiff::Zoned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    spans: Vec<Span>,
    text: String,
}

/// Days (Monday = 0) and minutes after midnight, start included, end excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    days: [bool; 7],
    start: u16,
    end: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("empty (write e.g. \"mon-fri 08:00-18:00\")")]
    Empty,
    #[error("`{0}`: expected DAYS HH:MM-HH:MM, DAYS or HH:MM-HH:MM")]
    Span(String),
    #[error("`{0}` is not a day (mon, tue, wed, thu, fri, sat, sun) or a range of days (mon-fri)")]
    Days(String),
    #[error("`{0}` is not a time range HH:MM-HH:MM (00:00 to 24:00)")]
    Times(String),
    #[error("`{0}`: the start and end are the same time (leave the times out for a whole day)")]
    EmptySpan(String),
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const DAY_MINUTES: u16 = 24 * 60;

impl Hours {
    pub fn parse(text: &str) -> Result<Hours, HoursError> {
        if text.trim().is_empty() {
            return Err(HoursError::Empty);
        }
        let spans = text.split(',').map(|span| parse_span(span.trim())).collect::<Result<Vec<_>, _>>()?;
        Ok(Hours { spans, text: text.trim().to_string() })
    }

    /// Whether the local time `at` (already in the route's zone) is inside one of the spans.
    pub fn contains(&self, at: &Zoned) -> bool {
        let day = usize::try_from(at.weekday().to_monday_zero_offset()).unwrap_or(0);
        let previous_day = (day + 6) % 7;
        let minute = u16::try_from(i32::from(at.hour()) * 60 + i32::from(at.minute())).unwrap_or(0);
        let on = |days: &[bool; 7], d: usize| days.get(d).copied().unwrap_or(false);
        self.spans.iter().any(|span| {
            if span.start < span.end {
                on(&span.days, day) && (span.start..span.end).contains(&minute)
            } else {
                // Over midnight: the evening part on a listed day, the morning part on the day after.
                (on(&span.days, day) && minute >= span.start) || (on(&span.days, previous_day) && minute < span.end)
            }
        })
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn parse_span(text: &str) -> Result<Span, HoursError> {
    let mut words = text.split_whitespace();
    let (days, times) = match (words.next(), words.next(), words.next()) {
        (Some(days), Some(times), None) => (parse_days(days)?, parse_times(times)?),
        (Some(one), None, None) if one.contains(':') => ([true; 7], parse_times(one)?),
        (Some(one), None, None) => (parse_days(one)?, (0, DAY_MINUTES)),
        _ => return Err(HoursError::Span(text.to_string())),
    };
    let (start, end) = times;
    if start == end {
        return Err(HoursError::EmptySpan(text.to_string()));
    }
    Ok(Span { days, start, end })
}

fn parse_days(text: &str) -> Result<[bool; 7], HoursError> {
    let bad = || HoursError::Days(text.to_string());
    let day = |name: &str| DAYS.iter().position(|d| d.eq_ignore_ascii_case(name)).ok_or_else(bad);
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (day(first)?, day(last)?),
        None => (day(text)?, day(text)?),
    };
    let mut days = [false; 7];
    let mut d = first;
    loop {
        if let Some(slot) = days.get_mut(d) {
            *slot = true;
        }
        if d == last {
            return Ok(days);
        }
        d = (d + 1) % 7;
    }
}

fn parse_times(text: &str) -> Result<(u16, u16), HoursError> {
    let bad = || HoursError::Times(text.to_string());
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let start = parse_time(start).filter(|&t| t < DAY_MINUTES).ok_or_else(bad)?;
    let end = parse_time(end).ok_or_else(bad)?;
    Ok((start, end))
}

/// `HH:MM`, 00:00 to 24:00, as minutes after midnight.
fn parse_time(text: &str) -> Option<u16> {
    let (hour, minute) = text.split_once(':')?;
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(hour) || !digits(minute) {
        return None;
    }
    let (hour, minute): (u16, u16) = (hour.parse().ok()?, minute.parse().ok()?);
    (minute < 60 && (hour < 24 || (hour == 24 && minute == 0))).then_some(hour * 60 + minute)
}
