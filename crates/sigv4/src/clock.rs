//! The few timestamp formats AWS signatures use, to and from unix seconds.
//!
//! Only UTC civil-date arithmetic is needed (no time zones, no calendars
//! other than the proleptic Gregorian one), so this is done by hand rather
//! than pulling a date library into every service that verifies requests.
//!
//! Formats handled:
//! * ISO 8601 basic, `20150830T123600Z`: SigV4 `X-Amz-Date`.
//! * ISO 8601 extended, `2015-08-30T12:36:00Z`, optionally with fractional
//!   seconds and with `Z`, a `+hh:mm`/`-hh:mm` offset or no zone at all
//!   (read as UTC, as in AWS's own SigV2 examples): SigV2 `Timestamp` and
//!   `Expires`.
//! * RFC 1123, `Sun, 30 Aug 2015 12:36:00 GMT`: the HTTP `Date` header,
//!   which SigV4 accepts when `X-Amz-Date` is absent.

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date.
///
/// Works in 400-year eras (146 097 days each) with years starting on
/// March 1st, so the leap day is the last day of the shifted year and the
/// month lengths follow a fixed linear pattern.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = i64::from((month + 9) % 12);
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719 468 is the day number of 1970-01-01 counted from 0000-03-01.
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both values are small by construction (1..=31, 1..=12).
    (year, day as u32, month as u32)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Broken-down UTC time; fields are validated before conversion so that
/// `2015-02-30` is refused instead of silently rolling over into March.
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

impl Civil {
    fn to_unix(&self) -> Option<i64> {
        // A leap second (:60) is accepted and lands on the next second, as
        // POSIX time has no slot for it.
        if !(1..=12).contains(&self.month)
            || self.day == 0
            || self.day > days_in_month(self.year, self.month)
            || self.hour > 23
            || self.minute > 59
            || self.second > 60
        {
            return None;
        }
        let days = days_from_civil(self.year, self.month, self.day);
        Some(
            days * SECS_PER_DAY
                + i64::from(self.hour) * 3_600
                + i64::from(self.minute) * 60
                + i64::from(self.second),
        )
    }

    fn from_unix(t: i64) -> Civil {
        let days = t.div_euclid(SECS_PER_DAY);
        let secs = t.rem_euclid(SECS_PER_DAY);
        let (year, day, month) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            // rem_euclid keeps these within 0..86_400.
            hour: (secs / 3_600) as u32,
            minute: (secs % 3_600 / 60) as u32,
            second: (secs % 60) as u32,
        }
    }
}

/// Parses a run of ASCII digits; `None` for anything else or an empty run.
fn digits(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 9 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u32, |acc, &b| acc * 10 + u32::from(b - b'0')),
    )
}

/// `20150830T123600Z` -> unix seconds.
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    Civil {
        year: i64::from(digits(&b[0..4])?),
        month: digits(&b[4..6])?,
        day: digits(&b[6..8])?,
        hour: digits(&b[9..11])?,
        minute: digits(&b[11..13])?,
        second: digits(&b[13..15])?,
    }
    .to_unix()
}

/// Unix seconds -> `20150830T123600Z`.
pub fn format_amz_date(t: i64) -> String {
    let c = Civil::from_unix(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// `2015-08-30T12:36:00Z`, `2015-08-30T12:36:00.000Z`,
/// `2015-08-30T12:36:00+00:00`, `2015-08-30T14:36:00+0200` or
/// `2015-08-30T12:36:00` (no zone: UTC) -> unix seconds. Fractional seconds
/// are truncated; signatures only care about whole seconds.
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let base = Civil {
        year: i64::from(digits(&b[0..4])?),
        month: digits(&b[5..7])?,
        day: digits(&b[8..10])?,
        hour: digits(&b[11..13])?,
        minute: digits(&b[14..16])?,
        second: digits(&b[17..19])?,
    }
    .to_unix()?;

    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        rest = &frac[len..];
    }
    let offset_secs = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (hh, mm) = match zone {
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => ([*h1, *h2], [*m1, *m2]),
                _ => return None,
            };
            let hours = i64::from(digits(&hh)?);
            let minutes = i64::from(digits(&mm)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 3_600 + minutes * 60;
            if *sign == b'-' { -magnitude } else { magnitude }
        }
        _ => return None,
    };
    Some(base - offset_secs)
}

/// Unix seconds -> `2015-08-30T12:36:00Z`, the form SigV2 clients send.
pub fn format_iso8601(t: i64) -> String {
    let c = Civil::from_unix(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// `Sun, 30 Aug 2015 12:36:00 GMT` -> unix seconds. The weekday is checked
/// for being a weekday name but not against the date: clients get it wrong
/// and it carries no information the rest does not.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let mut parts = s.split_ascii_whitespace();
    let weekday = parts.next()?.strip_suffix(',')?;
    if !WEEKDAYS.contains(&weekday) {
        return None;
    }
    let day_text = parts.next()?.as_bytes();
    let month_name = parts.next()?;
    let year_text = parts.next()?.as_bytes();
    let time = parts.next()?.as_bytes();
    let zone = parts.next()?;
    if parts.next().is_some() || !matches!(zone, "GMT" | "UTC" | "+0000") {
        return None;
    }
    if day_text.len() > 2 || year_text.len() != 4 || time.len() != 8 {
        return None;
    }
    if time[2] != b':' || time[5] != b':' {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month_name)?;
    Civil {
        year: i64::from(digits(year_text)?),
        month: u32::try_from(month).ok()? + 1,
        day: digits(day_text)?,
        hour: digits(&time[0..2])?,
        minute: digits(&time[3..5])?,
        second: digits(&time[6..8])?,
    }
    .to_unix()
}

/// Unix seconds -> `Sun, 30 Aug 2015 12:36:00 GMT`.
pub fn format_http_date(t: i64) -> String {
    let c = Civil::from_unix(t);
    // Index 0 of WEEKDAYS is Thursday, the weekday of 1970-01-01.
    let weekday = WEEKDAYS[t.div_euclid(SECS_PER_DAY).rem_euclid(7) as usize];
    let month = MONTHS[(c.month - 1) as usize];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        c.day, c.year, c.hour, c.minute, c.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2015-08-30T12:36:00Z, the date of the AWS SigV4 test suite.
    const SUITE: i64 = 1_440_938_160;

    #[test]
    fn epoch_and_known_dates() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(SUITE));
        assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
        assert_eq!(parse_amz_date("19691231T235959Z"), Some(-1));
        assert_eq!(parse_amz_date("20380119T031408Z"), Some(2_147_483_648));
        assert_eq!(format_amz_date(SUITE), "20150830T123600Z");
        assert_eq!(format_amz_date(-1), "19691231T235959Z");
        assert_eq!(format_iso8601(SUITE), "2015-08-30T12:36:00Z");
        assert_eq!(format_http_date(SUITE), "Sun, 30 Aug 2015 12:36:00 GMT");
        assert_eq!(format_http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn round_trips_every_day_over_several_centuries() {
        // Step a little over a day so the time of day varies too.
        let mut t = days_from_civil(1599, 1, 1) * SECS_PER_DAY;
        let end = days_from_civil(2500, 12, 31) * SECS_PER_DAY;
        while t < end {
            assert_eq!(parse_amz_date(&format_amz_date(t)), Some(t), "{t}");
            assert_eq!(parse_iso8601(&format_iso8601(t)), Some(t), "{t}");
            assert_eq!(parse_http_date(&format_http_date(t)), Some(t), "{t}");
            t += SECS_PER_DAY + 3_607;
        }
    }

    #[test]
    fn iso8601_variants() {
        for s in [
            "2015-08-30T12:36:00Z",
            "2015-08-30T12:36:00.000Z",
            "2015-08-30T12:36:00.123456Z",
            "2015-08-30T12:36:00+00:00",
            "2015-08-30T12:36:00-00:00",
            "2015-08-30T12:36:00+0000",
            "2015-08-30T14:36:00+02:00",
            "2015-08-30T07:06:00-05:30",
            "2015-08-30T12:36:00",
        ] {
            assert_eq!(parse_iso8601(s), Some(SUITE), "{s}");
        }
    }

    #[test]
    fn rejects_malformed_dates() {
        for s in [
            "",
            "20150830T123600",
            "20150830 123600Z",
            "2015083OT123600Z",
            "20150230T123600Z",
            "20151301T000000Z",
            "20150830T243600Z",
            "20150830T126000Z",
            "2015-08-30T12:36:00Zjunk",
            "\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}",
        ] {
            assert_eq!(parse_amz_date(s), None, "{s:?}");
        }
        for s in [
            "2015-08-30",
            "2015-08-30T12:36:00.Z",
            "2015-08-30T12:36:00+25:00",
            "2015-08-30T12:36:00+00",
            "2015-08-30T12:36:00 ",
            "2015-02-29T00:00:00Z",
            "+015-08-30T12:36:00Z",
            "2015-08-30T12:36:00\u{e9}",
        ] {
            assert_eq!(parse_iso8601(s), None, "{s:?}");
        }
        for s in [
            "Sun, 30 Aug 2015 12:36:00",
            "Sun 30 Aug 2015 12:36:00 GMT",
            "Sun, 30 Foo 2015 12:36:00 GMT",
            "Sun, 30 Aug 2015 12:36 GMT",
            "Sun, 30 Aug 2015 12:36:00 PST",
            "Sunday, 30-Aug-15 12:36:00 GMT",
        ] {
            assert_eq!(parse_http_date(s), None, "{s:?}");
        }
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        for t in [i64::MIN / 2, -62_135_596_800, 253_402_300_799, i64::MAX / 2] {
            let _ = format_amz_date(t);
            let _ = format_iso8601(t);
            let _ = format_http_date(t);
        }
        assert_eq!(parse_amz_date("99991231T235959Z"), Some(253_402_300_799));
        assert_eq!(parse_amz_date("00000101T000000Z"), Some(-62_167_219_200));
    }
}
