//! Instants with microsecond precision, and Nango's timestamp text forms.
//!
//! Nango renders timestamps with PostgreSQL's `to_json(timestamptz)`:
//! `YYYY-MM-DDTHH:MM:SS[.ffffff]±HH:MM`, with trailing zeros of the fraction dropped and
//! the offset of the server's time zone. Two renderings of the same instant can differ
//! (`+00:00` vs `-05:00`), so timestamps are parsed into [`Timestamp`] and compared as
//! instants, never as strings.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant: microseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

/// Why a timestamp text could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimestampError {
    text: String,
    reason: &'static str,
}

impl fmt::Display for TimestampError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid timestamp {:?}: {}", self.text, self.reason)
    }
}

impl std::error::Error for TimestampError {}

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// The current time.
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }

    /// This instant moved by `micros` microseconds.
    pub const fn add_micros(self, micros: i64) -> Self {
        Timestamp(self.0 + micros)
    }

    /// This instant truncated to whole milliseconds.
    pub const fn truncate_millis(self) -> Self {
        Timestamp(self.0.div_euclid(1000) * 1000)
    }

    /// Parse an RFC 3339 / ISO 8601 timestamp with an offset (`Z`, `±HH:MM`, `±HHMM` or
    /// `±HH`) and 0 to 9 fraction digits (digits past microseconds are truncated).
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        parse(text).map_err(|reason| TimestampError {
            text: truncate_for_error(text),
            reason,
        })
    }

    /// The form PostgreSQL's `to_json(timestamptz)` produces, in a zone at
    /// `offset_minutes` east of UTC: `2026-11-26T19:47:22.72838+00:00`.
    pub fn to_json_form(self, offset_minutes: i32) -> String {
        let mut out = String::with_capacity(32);
        self.write_json_form(offset_minutes, &mut out);
        out
    }

    /// Append [`Timestamp::to_json_form`] to `out` (no allocation of its own).
    pub fn write_json_form(self, offset_minutes: i32, out: &mut String) {
        write_naive(
            self.0 + i64::from(offset_minutes) * 60 * MICROS_PER_SEC,
            out,
        );
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.unsigned_abs();
        if abs < 100 * 60 {
            let mut b = *b"+00:00";
            b[0] = sign as u8;
            put2(&mut b[1..3], abs / 60);
            put2(&mut b[4..6], abs % 60);
            out.push_str(ascii(&b));
        } else {
            // An offset of 100 hours or more (never a real zone): more hour digits.
            let _ = write!(out, "{sign}{:02}:{:02}", abs / 60, abs % 60);
        }
    }

    /// Append [`Timestamp::to_utc_z`] to `out` (no allocation of its own).
    pub fn write_utc_z(self, out: &mut String) {
        write_naive(self.0, out);
        out.push('Z');
    }

    /// The UTC form ending in `Z` that Nango's `modified_after` accepts:
    /// `2026-11-26T19:47:22.728380Z` (fraction trimmed like [`Timestamp::to_json_form`]).
    pub fn to_utc_z(self) -> String {
        let mut out = String::with_capacity(28);
        self.write_utc_z(&mut out);
        out
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_form(0))
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_json_form(0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Timestamp::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

fn truncate_for_error(text: &str) -> String {
    text.chars().take(64).collect()
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Two decimal digits of `v` (below 100).
fn put2(b: &mut [u8], v: u32) {
    b[0] = b'0' + (v / 10) as u8;
    b[1] = b'0' + (v % 10) as u8;
}

fn ascii(b: &[u8]) -> &str {
    std::str::from_utf8(b).expect("ASCII digits and separators")
}

/// Append `micros` as a naive ISO date-time: `YYYY-MM-DDTHH:MM:SS`, then a fraction of
/// up to 6 digits with trailing zeros trimmed (none when whole seconds).
fn write_naive(micros: i64, out: &mut String) {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let frac = micros.rem_euclid(MICROS_PER_SEC) as u32;
    let days = secs.div_euclid(SECS_PER_DAY);
    let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    if (0..=9999).contains(&y) {
        let mut b = *b"0000-00-00T00:00:00";
        let y = y as u32;
        put2(&mut b[0..2], y / 100);
        put2(&mut b[2..4], y % 100);
        put2(&mut b[5..7], m as u32);
        put2(&mut b[8..10], d as u32);
        put2(&mut b[11..13], hh);
        put2(&mut b[14..16], mm);
        put2(&mut b[17..19], ss);
        out.push_str(ascii(&b));
    } else {
        // A year outside 0..=9999 (never from Nango): a sign or more digits.
        let _ = write!(out, "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
    }
    if frac != 0 {
        let mut f = *b".000000";
        put2(&mut f[1..3], frac / 10_000);
        put2(&mut f[3..5], (frac / 100) % 100);
        put2(&mut f[5..7], frac % 100);
        let mut len = f.len();
        while f[len - 1] == b'0' {
            len -= 1;
        }
        out.push_str(ascii(&f[..len]));
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Result<i64, &'static str> {
        let end = self.i + n;
        if end > self.b.len() {
            return Err("too short");
        }
        let mut v = 0i64;
        for &c in &self.b[self.i..end] {
            if !c.is_ascii_digit() {
                return Err("expected a digit");
            }
            v = v * 10 + i64::from(c - b'0');
        }
        self.i = end;
        Ok(v)
    }

    fn expect(&mut self, what: &[u8], reason: &'static str) -> Result<u8, &'static str> {
        match self.b.get(self.i) {
            Some(c) if what.contains(c) => {
                self.i += 1;
                Ok(*c)
            }
            _ => Err(reason),
        }
    }
}

fn parse(text: &str) -> Result<Timestamp, &'static str> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
    };
    let year = c.digits(4)?;
    c.expect(b"-", "expected '-' after the year")?;
    let month = c.digits(2)?;
    c.expect(b"-", "expected '-' after the month")?;
    let day = c.digits(2)?;
    c.expect(b"Tt ", "expected 'T' between date and time")?;
    let hour = c.digits(2)?;
    c.expect(b":", "expected ':' after the hour")?;
    let minute = c.digits(2)?;
    c.expect(b":", "expected ':' after the minutes")?;
    let second = c.digits(2)?;
    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err("time of day out of range");
    }
    let mut micros = 0i64;
    if c.b.get(c.i) == Some(&b'.') {
        c.i += 1;
        let start = c.i;
        while c.i < c.b.len() && c.b[c.i].is_ascii_digit() {
            c.i += 1;
        }
        let n = c.i - start;
        if n == 0 || n > 9 {
            return Err("the fraction must have 1 to 9 digits");
        }
        for k in 0..6 {
            micros *= 10;
            if k < n {
                micros += i64::from(c.b[start + k] - b'0');
            }
        }
    }
    let offset_secs = match c.b.get(c.i) {
        Some(b'Z' | b'z') => {
            c.i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            c.i += 1;
            let oh = c.digits(2)?;
            let om = if c.i == c.b.len() {
                0
            } else {
                if c.b[c.i] == b':' {
                    c.i += 1;
                }
                c.digits(2)?
            };
            if oh > 23 || om > 59 {
                return Err("offset out of range");
            }
            let s = oh * 3600 + om * 60;
            if sign == b'-' { -s } else { s }
        }
        None => return Err("missing the offset (Z or ±HH:MM)"),
        Some(_) => return Err("unexpected character after the time"),
    };
    if c.i != c.b.len() {
        return Err("unexpected text after the offset");
    }
    let secs =
        days_from_civil(year, month, day) * SECS_PER_DAY + hour * 3600 + minute * 60 + second
            - offset_secs;
    Ok(Timestamp(secs * MICROS_PER_SEC + micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The plain formatting `write_naive` and `write_json_form` must reproduce: an
    // independent reference built with `format!`.
    /// Reference: `YYYY-MM-DDTHH:MM:SS[.f]` of a local instant in microseconds, fraction trimmed.
    fn format_naive(micros: i64) -> String {
        let secs = micros.div_euclid(MICROS_PER_SEC);
        let frac = micros.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let mut out = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        );
        if frac != 0 {
            let digits = format!("{frac:06}");
            out.push('.');
            out.push_str(digits.trim_end_matches('0'));
        }
        out
    }

    fn reference_json_form(t: Timestamp, offset_minutes: i32) -> String {
        let mut out = format_naive(t.0 + i64::from(offset_minutes) * 60 * MICROS_PER_SEC);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.unsigned_abs();
        out.push_str(&format!("{sign}{:02}:{:02}", abs / 60, abs % 60));
        out
    }

    // 2026-11-26T19:47:22Z in seconds since the epoch.
    const BASE: i64 = 1_795_722_442;

    #[test]
    fn parses_every_form_nango_renders() {
        let cases: &[(&str, i64)] = &[
            // to_json with +00:00 and every fraction length, trailing zeros dropped
            ("2026-11-26T19:47:22+00:00", BASE * 1_000_000),
            ("2026-11-26T19:47:22.7+00:00", BASE * 1_000_000 + 700_000),
            ("2026-11-26T19:47:22.72+00:00", BASE * 1_000_000 + 720_000),
            ("2026-11-26T19:47:22.728+00:00", BASE * 1_000_000 + 728_000),
            ("2026-11-26T19:47:22.7283+00:00", BASE * 1_000_000 + 728_300),
            (
                "2026-11-26T19:47:22.72838+00:00",
                BASE * 1_000_000 + 728_380,
            ),
            (
                "2026-11-26T19:47:22.728381+00:00",
                BASE * 1_000_000 + 728_381,
            ),
            // other zones: the same instant
            (
                "2026-11-26T14:47:22.728381-05:00",
                BASE * 1_000_000 + 728_381,
            ),
            (
                "2026-11-27T01:17:22.728381+05:30",
                BASE * 1_000_000 + 728_381,
            ),
            (
                "2026-11-26T15:47:22.728381-04:00",
                BASE * 1_000_000 + 728_381,
            ),
            // Z forms (what modified_after takes), and other ISO 8601 offset spellings
            ("2026-11-26T19:47:22.728381Z", BASE * 1_000_000 + 728_381),
            ("2026-11-26T19:47:22Z", BASE * 1_000_000),
            ("2026-11-26T19:47:22.728z", BASE * 1_000_000 + 728_000),
            ("2026-11-26T19:47:22.728+0000", BASE * 1_000_000 + 728_000),
            ("2026-11-26T21:47:22.728+02", BASE * 1_000_000 + 728_000),
            ("2026-11-26 19:47:22.728+00:00", BASE * 1_000_000 + 728_000),
            // nanoseconds are truncated to microseconds
            ("2026-11-26T19:47:22.728381999Z", BASE * 1_000_000 + 728_381),
            // edges
            ("1970-01-01T00:00:00+00:00", 0),
            ("1969-12-31T23:59:59.999999+00:00", -1),
            ("2000-02-29T00:00:00Z", 951_782_400_000_000),
            ("2024-12-31T23:59:59.5-05:00", 1_735_707_599_500_000),
        ];
        for (text, micros) in cases {
            assert_eq!(Timestamp::parse(text), Ok(Timestamp(*micros)), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_timestamps() {
        for text in [
            "",
            "2026-11-26",
            "2026-11-26T19:47:22",
            "2026-11-26T19:47:22.+00:00",
            "2026-11-26T19:47:22.1234567890Z",
            "2026-13-26T19:47:22Z",
            "2026-02-29T19:47:22Z",
            "2026-11-31T19:47:22Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T19:60:00Z",
            "2026-11-26T19:47:22+24:00",
            "2026-11-26T19:47:22Z ",
            "2026-11-26T19:47:22+00:00x",
            "26-11-26T19:47:22Z",
            "2026/11/26T19:47:22Z",
            "2026-11-26T19:47:22.72838+0:00",
        ] {
            assert!(
                Timestamp::parse(text).is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn renders_like_postgres_to_json() {
        let t = Timestamp(BASE * 1_000_000 + 728_380);
        assert_eq!(t.to_json_form(0), "2026-11-26T19:47:22.72838+00:00");
        assert_eq!(t.to_json_form(-300), "2026-11-26T14:47:22.72838-05:00");
        assert_eq!(t.to_json_form(330), "2026-11-27T01:17:22.72838+05:30");
        assert_eq!(
            Timestamp(BASE * 1_000_000).to_json_form(0),
            "2026-11-26T19:47:22+00:00"
        );
        assert_eq!(t.to_utc_z(), "2026-11-26T19:47:22.72838Z");
        assert_eq!(
            Timestamp(-1).to_json_form(0),
            "1969-12-31T23:59:59.999999+00:00"
        );
    }

    #[test]
    fn writers_match_the_allocating_forms() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut instants: Vec<i64> = vec![
            0,
            -1,
            1,
            999_999,
            1_000_000,
            1_795_722_442_728_380,
            1_795_722_442_000_000,
            1_795_722_442_100_000,
            1_795_722_442_000_001,
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // just before year 0
            253_402_300_799_999_999, // 9999-12-31T23:59:59.999999
            253_402_300_800_000_000, // 10000-01-01
            i64::MAX / 4,
            i64::MIN / 4,
        ];
        for _ in 0..20_000 {
            let v = next();
            instants.push((v % 4_000_000_000_000_000) as i64 - 500_000_000_000_000);
            // Whole seconds and whole milliseconds, as generated payloads and Nango use.
            instants.push(((v >> 8) % 4_000_000_000) as i64 * 1_000_000);
            instants.push(((v >> 4) % 4_000_000_000_000) as i64 * 1_000);
        }
        let offsets = [
            0,
            -300,
            330,
            1439,
            -1439,
            -1,
            59,
            5999,
            6000,
            -6000,
            100_000,
            i32::MIN,
        ];
        for t in instants {
            let t = Timestamp::from_micros(t);
            let mut out = String::from("x");
            t.write_utc_z(&mut out);
            let z = format!("{}Z", format_naive(t.0));
            assert_eq!(out[1..], z, "{t:?}");
            assert_eq!(t.to_utc_z(), z, "{t:?}");
            for offset in offsets {
                let mut out = String::from("x");
                t.write_json_form(offset, &mut out);
                let reference = reference_json_form(t, offset);
                assert_eq!(out[1..], reference, "{t:?} {offset}");
                assert_eq!(t.to_json_form(offset), reference, "{t:?} {offset}");
            }
        }
    }

    #[test]
    fn render_then_parse_is_identity() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let micros = (x % 8_000_000_000_000_000) as i64 - 2_000_000_000_000_000;
            let t = Timestamp(micros);
            let offset = (x % 1681) as i32 - 840;
            assert_eq!(Timestamp::parse(&t.to_json_form(offset)), Ok(t));
            assert_eq!(Timestamp::parse(&t.to_utc_z()), Ok(t));
        }
    }

    #[test]
    fn truncates_to_milliseconds() {
        assert_eq!(Timestamp(1_234_567).truncate_millis(), Timestamp(1_234_000));
        assert_eq!(Timestamp(-1).truncate_millis(), Timestamp(-1000));
    }
}
