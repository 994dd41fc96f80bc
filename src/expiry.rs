//! When a session ends: expiry expressions (`15*60`, `+30m`), HTTP dates, and formatted dates.
//!
//! Everything here takes `now` as an argument where it matters and never reads the clock, so
//! tests drive time without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};

/// The latest instant pso represents: 9999-12-31 23:59:59 UTC, the end of HTTP dates' range.
/// Deadlines past it are clamped, because date formatters panic beyond it.
pub(crate) const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// Longest expression or date accepted, in bytes; real ones are a few dozen.
const MAX_INPUT_LEN: usize = 256;
/// Deepest nesting of parentheses and signs accepted: bounds the parser's recursion.
const MAX_DEPTH: usize = 32;

/// When a session expires: the cookie's lifetime and the server-side deadline together.
///
/// ```
/// use std::time::Duration;
/// use pso::Expiry;
///
/// assert_eq!(Expiry::parse("15*60")?, Expiry::In(Duration::from_secs(900)));
/// assert_eq!(Expiry::parse("(2*24+1)*3600")?, Expiry::In(Duration::from_secs(176_400)));
/// assert_eq!(Expiry::parse("+30m")?, Expiry::In(Duration::from_secs(1800)));
/// assert!(matches!(Expiry::parse("Mon, 15 Apr 2041 19:00:00 GMT")?, Expiry::At(_)));
/// // pso's own example, with its weekday that does not match the date:
/// let at = Expiry::parse_with_format("Mon, 15 APR 2001 19:00:00", "%a, %d %b %Y %H:%M:%S")?;
/// assert_eq!(at, Expiry::At(std::time::UNIX_EPOCH + Duration::from_secs(987_361_200)));
/// # Ok::<(), pso::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The cookie has no `Expires`/`Max-Age` and dies with the browser session; the server keeps
    /// the session until it has been idle for `PSOSessionGCMaxLifetime`.
    BrowserClose,
    /// Delete the session on the server and revoke the cookie.
    Now,
    /// Expire this long from now.
    In(Duration),
    /// Expire at this instant.
    At(SystemTime),
}

impl Expiry {
    /// Parses seconds (`900`), integer arithmetic (`15*60`, `(2*24+1)*3600`: `+ - * /` and
    /// parentheses), CGI::Session-style units (`+30m`, `2h`, `7d`; `s m h d w`, `M` = 30 days,
    /// `y` = 365 days, also inside expressions: `1h+30m`), or an HTTP date in any of the three
    /// RFC 9110 forms.
    ///
    /// A durations' value must not be negative; overflow, division by zero and nesting deeper
    /// than 32 are errors, never panics.
    pub fn parse(text: &str) -> Result<Expiry> {
        let text = text.trim();
        if text.len() > MAX_INPUT_LEN {
            return Err(expiry_error(format!("longer than {MAX_INPUT_LEN} bytes")));
        }
        match evaluate(text) {
            Ok(seconds) => {
                let seconds = u64::try_from(seconds)
                    .map_err(|_| expiry_error("a duration must not be negative"))?;
                Ok(Expiry::In(Duration::from_secs(seconds)))
            }
            Err(ExprError::Syntax(why)) => match httpdate::parse_http_date(text) {
                Ok(at) => Ok(Expiry::At(at)),
                Err(_) => Err(expiry_error(format!(
                    "{why}; expected seconds (900), arithmetic (15*60), a duration (+30m, 2h, 7d) \
                     or an HTTP date (Mon, 15 Apr 2041 19:00:00 GMT)"
                ))),
            },
            Err(ExprError::Arithmetic(why)) => Err(expiry_error(why)),
        }
    }

    /// Parses a date with a strftime-style format, as pso's
    /// `expire("Mon, 15 APR 2001 19:00:00", "%a, %d %b %Y %H:%M:%S")`.
    ///
    /// Directives: `%a %A` (weekday, read and ignored as strptime does), `%b %B %h` (month
    /// name, any case), `%d %e %m %Y %y %H %I %M %S %p %j`, `%T` (`%H:%M:%S`), `%z` (`+0100`,
    /// `-05:30`, `Z`), `%Z` (`GMT`, `UTC`, `Z`), `%%`. White space in the format matches any
    /// run of white space; other characters match themselves, ignoring case. Without `%z` the
    /// time is UTC.
    pub fn parse_with_format(date: &str, format: &str) -> Result<Expiry> {
        if date.len() > MAX_INPUT_LEN || format.len() > MAX_INPUT_LEN {
            return Err(expiry_error(format!("longer than {MAX_INPUT_LEN} bytes")));
        }
        let fields = strptime(date.as_bytes(), format.as_bytes())
            .map_err(|why| expiry_error(format!("{date:?} does not match {format:?}: {why}")))?;
        let secs = fields.unix_seconds().map_err(expiry_error)?;
        Ok(Expiry::At(from_unix_secs(secs)))
    }

    /// The absolute deadline this expiry sets at `now`: `None` for [`Expiry::BrowserClose`].
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let now = UNIX_EPOCH + Duration::from_secs(1_000);
    /// assert_eq!(pso::Expiry::In(Duration::from_secs(900)).deadline(now), Some(UNIX_EPOCH + Duration::from_secs(1_900)));
    /// assert_eq!(pso::Expiry::Now.deadline(now), Some(now));
    /// assert_eq!(pso::Expiry::BrowserClose.deadline(now), None);
    /// ```
    pub fn deadline(&self, now: SystemTime) -> Option<SystemTime> {
        match *self {
            Expiry::BrowserClose => None,
            Expiry::Now => Some(now),
            Expiry::In(duration) => Some(from_unix_secs(
                unix_secs(now).saturating_add(duration.as_secs()),
            )),
            Expiry::At(at) => Some(from_unix_secs(unix_secs(at))),
        }
    }
}

fn expiry_error(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::Expiry, why)
}

/// Seconds since the Unix epoch: 0 for instants before it, clamped at year 9999.
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .min(MAX_UNIX_SECS)
}

/// The instant `secs` after the Unix epoch, clamped at year 9999.
pub(crate) fn from_unix_secs(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.min(MAX_UNIX_SECS))
}

/// Milliseconds since the Unix epoch: 0 for instants before it.
pub(crate) fn unix_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A request's time: `now` as the request saw it when it began, which every expiry decision
/// of the request uses, and a monotonic start that says how long it has run since.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    now: SystemTime,
    started: std::time::Instant,
}

impl Clock {
    /// The clock of a request that begins now, at `now`.
    pub fn starting_at(now: SystemTime) -> Clock {
        Clock {
            now,
            started: std::time::Instant::now(),
        }
    }

    /// When the request began.
    pub fn now(&self) -> SystemTime {
        self.now
    }

    /// When the request began, in seconds since the Unix epoch.
    pub fn secs(&self) -> u64 {
        unix_secs(self.now)
    }

    /// When the request began, in milliseconds: sign-in times, which must order the events
    /// of one second.
    pub fn millis(&self) -> u64 {
        unix_millis(self.now)
    }

    /// This moment, in milliseconds: when the request began, plus how long it has run. For
    /// what must record when it happened, not when its request began (a request may run
    /// for minutes behind a slow body).
    pub fn millis_now(&self) -> u64 {
        unix_millis(self.moment())
    }

    /// This moment, in seconds (see [`Clock::millis_now`]).
    pub fn secs_now(&self) -> u64 {
        unix_secs(self.moment())
    }

    /// When the request began plus how long it has run, to the nanosecond: rounding whole
    /// seconds apart would date a save up to a second early.
    fn moment(&self) -> SystemTime {
        self.now
            .checked_add(self.started.elapsed())
            .unwrap_or(self.now)
    }
}

// ---------------------------------------------------------------------------------------------
// Integer expressions

enum ExprError {
    /// Not an expression at all: maybe a date.
    Syntax(String),
    /// An expression whose value cannot be computed.
    Arithmetic(String),
}

fn evaluate(text: &str) -> Result<i64, ExprError> {
    let mut parser = ExprParser {
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let value = parser.expr()?;
    parser.skip_spaces();
    if parser.pos != parser.bytes.len() {
        return Err(ExprError::Syntax(format!(
            "unexpected {:?} at byte {}",
            char::from(parser.bytes[parser.pos]),
            parser.pos
        )));
    }
    Ok(value)
}

struct ExprParser<'a> {
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl ExprParser<'_> {
    fn skip_spaces(&mut self) {
        while self
            .bytes
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_spaces();
        self.bytes.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<i64, ExprError> {
        let mut value = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let rhs = self.term()?;
            value = if op == b'+' {
                value.checked_add(rhs)
            } else {
                value.checked_sub(rhs)
            }
            .ok_or_else(overflow)?;
        }
        Ok(value)
    }

    fn term(&mut self) -> Result<i64, ExprError> {
        let mut value = self.factor()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.pos += 1;
            let rhs = self.factor()?;
            value = if op == b'*' {
                value.checked_mul(rhs).ok_or_else(overflow)?
            } else if rhs == 0 {
                return Err(ExprError::Arithmetic("division by zero".into()));
            } else {
                value.checked_div(rhs).ok_or_else(overflow)?
            };
        }
        Ok(value)
    }

    fn factor(&mut self) -> Result<i64, ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::Arithmetic(format!(
                "nested deeper than {MAX_DEPTH} levels"
            )));
        }
        let value = match self.peek() {
            Some(b'+') => {
                self.pos += 1;
                self.factor()?
            }
            Some(b'-') => {
                self.pos += 1;
                self.factor()?.checked_neg().ok_or_else(overflow)?
            }
            Some(b'(') => {
                self.pos += 1;
                let value = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err(ExprError::Syntax("a '(' is not closed".into()));
                }
                self.pos += 1;
                value
            }
            Some(b'0'..=b'9') => self.number()?,
            Some(other) => {
                return Err(ExprError::Syntax(format!(
                    "unexpected {:?} at byte {}",
                    char::from(other),
                    self.pos
                )));
            }
            None => {
                return Err(ExprError::Syntax(
                    "the expression is empty or cut short".into(),
                ));
            }
        };
        self.depth -= 1;
        Ok(value)
    }

    fn number(&mut self) -> Result<i64, ExprError> {
        let mut value: i64 = 0;
        while let Some(&digit @ b'0'..=b'9') = self.bytes.get(self.pos) {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i64::from(digit - b'0')))
                .ok_or_else(overflow)?;
            self.pos += 1;
        }
        let unit = match self.bytes.get(self.pos) {
            Some(b's') => 1,
            Some(b'm') => 60,
            Some(b'h') => 3_600,
            Some(b'd') => 86_400,
            Some(b'w') => 7 * 86_400,
            Some(b'M') => 30 * 86_400,
            Some(b'y') => 365 * 86_400,
            _ => return Ok(value),
        };
        self.pos += 1;
        value.checked_mul(unit).ok_or_else(overflow)
    }
}

fn overflow() -> ExprError {
    ExprError::Arithmetic("the value overflows".into())
}

// ---------------------------------------------------------------------------------------------
// Formatted dates (strptime)

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

#[derive(Default)]
struct DateFields {
    year: Option<i64>,
    month: Option<u32>,
    day: Option<u32>,
    day_of_year: Option<u32>,
    hour: u32,
    hour12: Option<u32>,
    pm: Option<bool>,
    minute: u32,
    second: u32,
    offset_secs: i64,
}

impl DateFields {
    fn unix_seconds(&self) -> Result<u64, String> {
        let year = self.year.ok_or("the format has no year (%Y or %y)")?;
        let days = match (self.month, self.day, self.day_of_year) {
            (Some(month), Some(day), _) => {
                if day == 0 || day > days_in_month(year, month) {
                    return Err(format!("{year}-{month:02} has no day {day}"));
                }
                days_from_civil(year, month, day)
            }
            (None, None, Some(yday)) => {
                let length = if is_leap(year) { 366 } else { 365 };
                if yday == 0 || yday > length {
                    return Err(format!("{year} has no day of year {yday}"));
                }
                days_from_civil(year, 1, 1) + i64::from(yday) - 1
            }
            _ => return Err("the format needs a month and a day (or %j)".into()),
        };
        let hour = match (self.hour12, self.pm) {
            (Some(h), Some(pm)) => h % 12 + if pm { 12 } else { 0 },
            (Some(h), None) => h,
            (None, _) => self.hour,
        };
        if hour > 23 || self.minute > 59 || self.second > 60 {
            return Err("the time of day is out of range".into());
        }
        let secs = days * 86_400
            + i64::from(hour) * 3_600
            + i64::from(self.minute) * 60
            + i64::from(self.second.min(59))
            - self.offset_secs;
        u64::try_from(secs)
            .ok()
            .filter(|&s| s <= MAX_UNIX_SECS)
            .ok_or_else(|| "the date is before 1970 or after 9999".into())
    }
}

fn strptime(mut input: &[u8], format: &[u8]) -> Result<DateFields, String> {
    let mut fields = DateFields::default();
    let mut fmt = format;
    while let Some((&c, rest)) = fmt.split_first() {
        fmt = rest;
        if c.is_ascii_whitespace() {
            let spaces = input.iter().take_while(|b| b.is_ascii_whitespace()).count();
            if spaces == 0 {
                return Err("expected white space".into());
            }
            input = &input[spaces..];
            continue;
        }
        if c != b'%' {
            match input.split_first() {
                Some((&got, rest)) if got.eq_ignore_ascii_case(&c) => input = rest,
                _ => return Err(format!("expected {:?}", char::from(c))),
            }
            continue;
        }
        let Some((&directive, rest)) = fmt.split_first() else {
            return Err("the format ends with a lone %".into());
        };
        fmt = rest;
        match directive {
            b'a' | b'A' => {
                name_index(&mut input, &WEEKDAYS).ok_or("expected a weekday name")?;
            }
            b'b' | b'B' | b'h' => {
                let month = name_index(&mut input, &MONTHS).ok_or("expected a month name")?;
                fields.month = Some(month as u32 + 1);
            }
            b'd' | b'e' => {
                skip_one_space(&mut input, directive == b'e');
                fields.day = Some(digits(&mut input, 2, "a day")?);
            }
            b'j' => fields.day_of_year = Some(digits(&mut input, 3, "a day of year")?),
            b'm' => fields.month = Some(digits(&mut input, 2, "a month").and_then(month_in_range)?),
            b'Y' => fields.year = Some(i64::from(digits(&mut input, 4, "a year")?)),
            b'y' => {
                let yy = i64::from(digits(&mut input, 2, "a two-digit year")?);
                fields.year = Some(if yy < 69 { 2000 + yy } else { 1900 + yy });
            }
            b'H' => fields.hour = digits(&mut input, 2, "an hour")?,
            b'I' => fields.hour12 = Some(digits(&mut input, 2, "an hour")?),
            b'M' => fields.minute = digits(&mut input, 2, "minutes")?,
            b'S' => fields.second = digits(&mut input, 2, "seconds")?,
            b'T' => {
                fields.hour = digits(&mut input, 2, "an hour")?;
                expect_byte(&mut input, b':')?;
                fields.minute = digits(&mut input, 2, "minutes")?;
                expect_byte(&mut input, b':')?;
                fields.second = digits(&mut input, 2, "seconds")?;
            }
            b'p' => {
                let index = name_index(&mut input, &["am", "pm"]).ok_or("expected AM or PM")?;
                fields.pm = Some(index == 1);
            }
            b'z' => fields.offset_secs = utc_offset(&mut input)?,
            b'Z' => {
                name_index(&mut input, &["gmt", "utc", "z"]).ok_or("expected GMT or UTC")?;
            }
            b'%' => expect_byte(&mut input, b'%')?,
            other => return Err(format!("unsupported directive %{}", char::from(other))),
        }
    }
    if input.is_empty() {
        Ok(fields)
    } else {
        Err("text is left over after the format".into())
    }
}

fn month_in_range(month: u32) -> Result<u32, String> {
    if (1..=12).contains(&month) {
        Ok(month)
    } else {
        Err(format!("there is no month {month}"))
    }
}

/// Matches a full name or its three-letter abbreviation, ignoring case; returns its index.
fn name_index(input: &mut &[u8], names: &[&str]) -> Option<usize> {
    for (index, name) in names.iter().enumerate() {
        for candidate in [name.as_bytes(), &name.as_bytes()[..name.len().min(3)]] {
            if input.len() >= candidate.len()
                && input[..candidate.len()].eq_ignore_ascii_case(candidate)
            {
                *input = &input[candidate.len()..];
                return Some(index);
            }
        }
    }
    None
}

fn skip_one_space(input: &mut &[u8], allowed: bool) {
    if allowed && input.first() == Some(&b' ') {
        *input = &input[1..];
    }
}

fn digits(input: &mut &[u8], max: usize, what: &str) -> Result<u32, String> {
    let count = input
        .iter()
        .take(max)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if count == 0 {
        return Err(format!("expected {what}"));
    }
    let value = input[..count]
        .iter()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    *input = &input[count..];
    Ok(value)
}

fn expect_byte(input: &mut &[u8], byte: u8) -> Result<(), String> {
    match input.split_first() {
        Some((&got, rest)) if got == byte => {
            *input = rest;
            Ok(())
        }
        _ => Err(format!("expected {:?}", char::from(byte))),
    }
}

fn utc_offset(input: &mut &[u8]) -> Result<i64, String> {
    if let Some(rest) = input.strip_prefix(b"Z") {
        *input = rest;
        return Ok(0);
    }
    let sign = match input.first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Err("expected a UTC offset like +0100".into()),
    };
    *input = &input[1..];
    let hours = digits(input, 2, "offset hours")?;
    if input.first() == Some(&b':') {
        *input = &input[1..];
    }
    let minutes = digits(input, 2, "offset minutes")?;
    if hours > 23 || minutes > 59 {
        return Err("the UTC offset is out of range".into());
    }
    Ok(sign * (i64::from(hours) * 3_600 + i64::from(minutes) * 60))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(n: u64) -> Expiry {
        Expiry::In(Duration::from_secs(n))
    }

    fn at(n: u64) -> Expiry {
        Expiry::At(UNIX_EPOCH + Duration::from_secs(n))
    }

    #[test]
    fn expressions() {
        let cases: &[(&str, Option<Expiry>)] = &[
            ("900", Some(secs(900))),
            ("  900 ", Some(secs(900))),
            ("15*60", Some(secs(900))),
            ("15 * 60", Some(secs(900))),
            ("(2*24+1)*3600", Some(secs(176_400))),
            ("7/2", Some(secs(3))),
            ("10-4-3", Some(secs(3))),
            ("-(-5)", Some(secs(5))),
            ("+30m", Some(secs(1_800))),
            ("30s", Some(secs(30))),
            ("2h", Some(secs(7_200))),
            ("7d", Some(secs(604_800))),
            ("1w", Some(secs(604_800))),
            ("1M", Some(secs(2_592_000))),
            ("1y", Some(secs(31_536_000))),
            ("1h+30m", Some(secs(5_400))),
            ("0", Some(secs(0))),
            ("-1", None),
            ("1/0", None),
            ("9223372036854775807+1", None),
            ("99999999999999999999", None),
            ("9223372036854775807y", None),
            ("-9223372036854775807-1", None),
            ("(1", None),
            ("1)", None),
            ("", None),
            ("*", None),
            ("2x", None),
            ("1 2", None),
            ("15*60; rm -rf /", None),
        ];
        for (text, expected) in cases {
            let got = Expiry::parse(text).ok();
            assert_eq!(&got, expected, "{text:?}");
        }
    }

    #[test]
    fn arithmetic_errors_say_what_went_wrong() {
        let why = |t: &str| Expiry::parse(t).unwrap_err().to_string();
        assert!(why("1/0").contains("division by zero"));
        assert!(why("9223372036854775807*2").contains("overflow"));
        assert!(why(&format!("{}1{}", "(".repeat(40), ")".repeat(40))).contains("nested"));
        assert!(why(&"-".repeat(100)).contains("nested"));
        assert!(why(&"1+".repeat(200)).contains("longer than"));
        assert!(why("soon").contains("HTTP date"));
    }

    #[test]
    fn http_dates_in_all_three_forms() {
        // 2041-04-15 19:00:00 UTC
        let expected = Some(at(2_249_665_200));
        for text in [
            "Mon, 15 Apr 2041 19:00:00 GMT",
            "Monday, 15-Apr-41 19:00:00 GMT",
            "Mon Apr 15 19:00:00 2041",
        ] {
            assert_eq!(Expiry::parse(text).ok(), expected, "{text}");
        }
        // A weekday that does not match the date is not a valid HTTP date.
        assert!(Expiry::parse("Tue, 15 Apr 2041 19:00:00 GMT").is_err());
        assert!(Expiry::parse("Mon, 15 Apr 2041 25:00:00 GMT").is_err());
    }

    #[test]
    fn formatted_dates() {
        let f = |d: &str, f: &str| Expiry::parse_with_format(d, f).ok();
        let full = "%a, %d %b %Y %H:%M:%S";
        // pso's example: 15 April 2001 was a Sunday, and strptime ignores the weekday.
        assert_eq!(f("Mon, 15 APR 2001 19:00:00", full), Some(at(987_361_200)));
        assert_eq!(
            f("Sunday, 15 april 2001 19:00:00", "%A, %d %B %Y %T"),
            Some(at(987_361_200))
        );
        assert_eq!(
            f("2001-04-15 21:00:00 +0200", "%Y-%m-%d %H:%M:%S %z"),
            Some(at(987_361_200))
        );
        assert_eq!(
            f("2001-04-15T19:00:00Z", "%Y-%m-%dT%H:%M:%S%z"),
            Some(at(987_361_200))
        );
        assert_eq!(
            f("15/04/01 07:00:00 PM", "%d/%m/%y %I:%M:%S %p"),
            Some(at(987_361_200))
        );
        assert_eq!(
            f("2001 105 19:00:00 GMT", "%Y %j %T %Z"),
            Some(at(987_361_200))
        );
        assert_eq!(f("1970-01-01", "%Y-%m-%d"), Some(at(0)));
        assert_eq!(f("2000-02-29", "%Y-%m-%d"), Some(at(951_782_400)));
        assert_eq!(
            f("9999-12-31 23:59:59", "%Y-%m-%d %T"),
            Some(at(MAX_UNIX_SECS))
        );
        for (date, format) in [
            ("2001-02-29", "%Y-%m-%d"),
            ("2001-13-01", "%Y-%m-%d"),
            ("2001-04-31", "%Y-%m-%d"),
            ("1969-12-31", "%Y-%m-%d"),
            ("2001-04-15 24:00:00", "%Y-%m-%d %T"),
            ("2001-04-15", "%Y-%m-%d %H"),
            ("2001-04-15 extra", "%Y-%m-%d"),
            ("Foo, 15 Apr 2001", "%a, %d %b %Y"),
            ("15 Apr", "%d %b"),
            ("2001", "%Y %Q"),
            ("2001", "%Y%"),
        ] {
            assert_eq!(f(date, format), None, "{date} / {format}");
        }
    }

    #[test]
    fn deadlines_clamp_instead_of_overflowing() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let far = Expiry::In(Duration::from_secs(u64::MAX)).deadline(now);
        assert_eq!(far, Some(from_unix_secs(MAX_UNIX_SECS)));
        assert_eq!(unix_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }

    /// A small expression tree, printed and evaluated independently of the parser.
    #[derive(Debug, Clone)]
    enum Tree {
        Num(i64),
        Neg(Box<Tree>),
        Bin(Box<Tree>, char, Box<Tree>),
    }

    impl Tree {
        fn text(&self) -> String {
            match self {
                Tree::Num(n) => n.to_string(),
                Tree::Neg(t) => format!("-({})", t.text()),
                Tree::Bin(a, op, b) => format!("({}){op}({})", a.text(), b.text()),
            }
        }
        fn eval(&self) -> Option<i64> {
            match self {
                Tree::Num(n) => Some(*n),
                Tree::Neg(t) => t.eval()?.checked_neg(),
                Tree::Bin(a, op, b) => {
                    let (a, b) = (a.eval()?, b.eval()?);
                    match op {
                        '+' => a.checked_add(b),
                        '-' => a.checked_sub(b),
                        '*' => a.checked_mul(b),
                        _ => a.checked_div(b),
                    }
                }
            }
        }
    }

    fn tree() -> impl Strategy<Value = Tree> {
        (0i64..100_000)
            .prop_map(Tree::Num)
            .prop_recursive(4, 32, 2, |inner| {
                prop_oneof![
                    inner.clone().prop_map(|t| Tree::Neg(Box::new(t))),
                    (
                        inner.clone(),
                        prop::sample::select(vec!['+', '-', '*', '/']),
                        inner
                    )
                        .prop_map(|(a, op, b)| Tree::Bin(
                            Box::new(a),
                            op,
                            Box::new(b)
                        )),
                ]
            })
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in ".{0,300}") {
            let _ = Expiry::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_expression_alphabet(text in "[0-9smhdwMy()+*/ -]{0,80}") {
            let _ = Expiry::parse(&text);
        }

        #[test]
        fn strptime_never_panics(date in ".{0,60}", format in "(%[a-zA-Z%]|[ ,:/-]|[a-z0-9]){0,12}") {
            let _ = Expiry::parse_with_format(&date, &format);
        }

        #[test]
        fn expressions_evaluate_like_checked_arithmetic(t in tree()) {
            let text = t.text();
            prop_assume!(text.len() <= MAX_INPUT_LEN);
            let parsed = Expiry::parse(&text).ok();
            let expected = t.eval().and_then(|v| u64::try_from(v).ok()).map(secs);
            prop_assert_eq!(parsed, expected, "{}", text);
        }

        #[test]
        fn formatted_dates_round_trip_through_http_dates(secs in 0u64..MAX_UNIX_SECS) {
            let when = UNIX_EPOCH + Duration::from_secs(secs);
            let text = httpdate::fmt_http_date(when);
            prop_assert_eq!(Expiry::parse(&text).ok(), Some(Expiry::At(when)));
            prop_assert_eq!(
                Expiry::parse_with_format(&text, "%a, %d %b %Y %H:%M:%S GMT").ok(),
                Some(Expiry::At(when))
            );
        }
    }
}
