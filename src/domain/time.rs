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
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
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
