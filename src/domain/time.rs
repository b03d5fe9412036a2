//! Times on the wire: ISO 8601 in UTC to the second, `2025-07-01T10:00:02Z`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

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

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_and_zulu() {
        let at = chrono::DateTime::parse_from_rfc3339("2025-07-01T10:00:02.789+00:00").unwrap();
        assert_eq!(super::iso(at.into()), "2025-07-01T10:00:02Z");
    }
}
