//! Times on the wire: ISO 8601 in UTC to the second, `2025-07-01T10:00:02Z`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// The latest time stored: both stores order times up to the year 9999
/// (SQLite compares them as text), and no configured span needs more.
fn latest() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).expect("9999-12-31T23:59:59Z")
}

/// `at + span`, at the latest [`latest`]: a configured span may reach past
/// the calendar, where adding would panic.
pub fn after(at: DateTime<Utc>, span: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(span)
        .ok()
        .and_then(|span| at.checked_add_signed(span))
        .map_or_else(latest, |t| t.min(latest()))
}

/// `at - span`, at the earliest the Unix epoch.
pub fn before(at: DateTime<Utc>, span: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(span)
        .ok()
        .and_then(|span| at.checked_sub_signed(span))
        .map_or(DateTime::UNIX_EPOCH, |t| t.max(DateTime::UNIX_EPOCH))
}

pub fn iso(at: DateTime<Utc>) -> String {
    let mut out = Vec::with_capacity(ISO_LEN);
    write_iso(&mut out, at);
    String::from_utf8(out).expect("ASCII")
}

/// The length of [`iso`] in the years 0 to 9999.
const ISO_LEN: usize = "2025-07-01T10:00:02Z".len();

/// Appends [`iso`]`(at)` to `out`: digit by digit in the years 0 to 9999
/// (what every stored time is; a panel writes one a contact), as chrono
/// writes it otherwise.
pub fn write_iso(out: &mut Vec<u8>, at: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let (date, time) = (at.date_naive(), at.time());
    let year = date.year();
    // A leap second chrono represents as nanoseconds past the second.
    if !(0..=9999).contains(&year) || time.nanosecond() >= 1_000_000_000 {
        out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::Secs, true).as_bytes());
        return;
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let year = year as u32;
    let [c, y] = [two(year / 100), two(year % 100)];
    let [mo, d] = [two(date.month()), two(date.day())];
    let [h, mi, s] = [two(time.hour()), two(time.minute()), two(time.second())];
    out.extend_from_slice(&[
        c[0], c[1], y[0], y[1], b'-', mo[0], mo[1], b'-', d[0], d[1], b'T', h[0], h[1], b':',
        mi[0], mi[1], b':', s[0], s[1], b'Z',
    ]);
}

/// `#[serde(serialize_with = "iso8601")]`
pub fn iso8601<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso(*at))
}

/// `#[serde(serialize_with = "iso8601_opt")]`
pub fn iso8601_opt<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&iso(*at)),
        None => s.serialize_none(),
    }
}

/// `#[serde(with = "crate::domain::time::compact")]`: as chrono writes it
/// (RFC 3339) in human-readable formats (JSON: what earlier replicas read),
/// as nanoseconds since the epoch in binary ones (the bus's envelope: a few
/// bytes, no formatting or parsing; the years 1677 to 2262).
pub mod compact {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::Error};

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            at.serialize(s)
        } else {
            let nanos = at.timestamp_nanos_opt();
            s.serialize_i64(nanos.ok_or_else(|| S::Error::custom("a time out of range"))?)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        if d.is_human_readable() {
            DateTime::deserialize(d)
        } else {
            Ok(DateTime::from_timestamp_nanos(i64::deserialize(d)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, NaiveDate, SecondsFormat};

    /// Written by hand as chrono writes it: every field's carry, the years at
    /// both ends of four digits and past them, a leap second.
    #[test]
    fn iso_is_what_chrono_writes() {
        let chrono = |at: DateTime<chrono::Utc>| at.to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut times: Vec<DateTime<chrono::Utc>> = [
            0,
            1,
            59,
            86_399,
            951_782_400,   // 2000-02-29
            1_767_225_599, // 2025-12-31T23:59:59
            253_402_300_799,
            253_402_300_800,
            -62_167_219_200, // 0000-01-01
            -62_167_219_201,
        ]
        .into_iter()
        .map(|secs| DateTime::from_timestamp(secs, 999_999_999).unwrap())
        .collect();
        // Every hour of a few years, at odd seconds.
        times.extend(
            (0..50_000i64).map(|i| DateTime::from_timestamp(1_700_000_000 + i * 3_607, 0).unwrap()),
        );
        let leap = NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        times.push(leap);
        for at in times {
            assert_eq!(super::iso(at), chrono(at), "{at:?}");
        }
    }

    #[test]
    fn spans_past_the_calendar_saturate() {
        let now = chrono::Utc::now();
        assert_eq!(
            super::after(now, Duration::from_secs(60)),
            now + chrono::TimeDelta::seconds(60)
        );
        for span in [
            Duration::MAX,
            Duration::from_secs(1 << 50),
            Duration::from_secs(1 << 40),
        ] {
            assert_eq!(super::iso(super::after(now, span)), "9999-12-31T23:59:59Z");
            assert_eq!(super::before(now, span), chrono::DateTime::UNIX_EPOCH);
        }
    }

    #[test]
    fn seconds_and_zulu() {
        let at = chrono::DateTime::parse_from_rfc3339("2025-07-01T10:00:02.789+00:00").unwrap();
        assert_eq!(super::iso(at.into()), "2025-07-01T10:00:02Z");
    }
}
