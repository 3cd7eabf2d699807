//! Where the core gets the time from, so tests can move it by hand.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A duration in whole milliseconds as an i64, saturating rather than
/// wrapping to a negative number.
pub fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A source of the current time as Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The real wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
            // A system clock set before 1970 reads as the epoch (a chosen
            // floor: times are never negative).
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to (for tests).
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now_ms: Arc::new(AtomicI64::new(start_ms)),
        }
    }

    pub fn advance_ms(&self, milliseconds: i64) {
        self.now_ms.fetch_add(milliseconds, Ordering::SeqCst);
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// (year, month 1–12, day 1–31) of a count of days since 1970-01-01, in
/// the proleptic Gregorian calendar (Howard Hinnant's public-domain
/// civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of (year, month 1–12, day 1–31): the inverse of
/// [`civil_from_days`].
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Formats Unix milliseconds as an RFC 3339 UTC timestamp
/// (`2026-11-21T09:30:00.125Z`), for JSON and CSV.
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    let (year, month, day) = civil_from_days(unix_ms.div_euclid(DAY_MS));
    let millis_of_day = unix_ms.rem_euclid(DAY_MS);
    let hours = millis_of_day / 3_600_000;
    let minutes = millis_of_day / 60_000 % 60;
    let seconds = millis_of_day / 1000 % 60;
    let millis = millis_of_day % 1000;
    format!("{year:04}-{month:02}-{day:02}T{hours:02}:{minutes:02}:{seconds:02}.{millis:03}Z")
}

/// Reads an RFC 3339 timestamp (`2026-11-21T09:30:00Z`, with optional
/// fraction and a `Z` or `±HH:MM` offset) as Unix milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes()
            .all(|byte| byte.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if bytes.len() < 20
        || bytes[4] != b'-'
        || bytes[7] != b'-'
        || !matches!(bytes[10], b'T' | b't')
        || bytes[13] != b':'
        || bytes[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days_in_month = days_from_civil(year + i64::from(month == 12), month % 12 + 1, 1)
        - days_from_civil(year, month, 1);
    if day < 1 || day > days_in_month {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse::<i64>().ok()?;
        rest = &fraction[digits..];
    }
    let offset_ms = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            // Two digits each, an hour of the day and a minute of the hour.
            let digits = |part: &str| {
                part.bytes()
                    .all(|byte| byte.is_ascii_digit())
                    .then(|| part.parse::<i64>().ok())
                    .flatten()
            };
            let hours = digits(rest.get(1..3)?).filter(|hours| *hours <= 23)?;
            let minutes = digits(rest.get(4..6)?).filter(|minutes| *minutes <= 59)?;
            sign * (hours * 60 + minutes) * 60_000
        }
        _ => return None,
    };
    let seconds = ((days_from_civil(year, month, day) * 24 + hour) * 60 + minute) * 60 + second;
    Some(seconds * 1000 + millis - offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rfc3339() {
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T09:30:00.125Z"),
            Some(1_795_253_400_125)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T09:30:00Z"),
            Some(1_795_253_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-21T10:30:00+01:00"),
            Some(1_795_253_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Some(951_782_400_000)
        );
        for wrong in [
            "2026-02-30T00:00:00Z",
            "2026-11-21 09:30:00Z",
            "2026-11-21T09:30:00",
            "yesterday",
            "2026-11-21T09:30:00.Z",
        ] {
            assert_eq!(parse_rfc3339_ms(wrong), None, "{wrong}");
        }
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(1_795_253_400_125),
            "2026-11-21T09:30:00.125Z"
        );
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn days_and_dates_convert_both_ways() {
        for days in [-800_000, -1, 0, 59, 11_016, 20_513, 20_779, 2_000_000] {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(
                days_from_civil(year, month, day),
                days,
                "{year}-{month}-{day}"
            );
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(days_from_civil(2026, 12, 1), 20_788);
    }
}

/// Serializes Unix milliseconds as RFC 3339 (`#[serde(serialize_with =
/// "rfc3339::serialize")]`): every time the API and `--json` show is one.
pub mod rfc3339 {
    pub fn serialize<S: serde::Serializer>(
        unix_ms: &i64,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_rfc3339_ms(*unix_ms))
    }

    /// The same, for a time that may be absent (`null`).
    pub mod option {
        pub fn serialize<S: serde::Serializer>(
            unix_ms: &Option<i64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match unix_ms {
                Some(unix_ms) => super::serialize(unix_ms, serializer),
                None => serializer.serialize_none(),
            }
        }
    }
}
