//! A rate, as settings write it: `30/min`, `5/10s`, `10/hour`.

use std::{fmt, num::NonZeroU32, str::FromStr, time::Duration};

/// `count` events per `period`: a client may spend all `count` at once, and
/// then one more every `period / count` (a token bucket, or GCRA).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        let count = NonZeroU32::new(count)?;
        (!period.is_zero()).then_some(Self { count, period })
    }

    /// How often one more event is allowed once the burst is spent.
    pub fn interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `COUNT/PERIOD`, where `PERIOD` is a unit (`s`, `min`, `hour`, `day`)
    /// with an optional number before it: `100/10s`, `30/min`, `5/2hour`.
    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{raw:?} is not a rate such as 30/min, 100/10s or 10/hour");
        let (count, period) = raw.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let digits = period.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = period.split_at(digits);
        let number: u64 = if number.is_empty() {
            1
        } else {
            number.parse().map_err(|_| bad())?
        };
        let unit_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        let period = Duration::from_secs(number.checked_mul(unit_secs).ok_or_else(bad)?);
        Self::new(count, period).ok_or_else(bad)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.period.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let rate = |s: &str| {
            s.parse::<Rate>()
                .map(|r| (r.count.get(), r.period.as_secs()))
        };
        assert_eq!(rate("30/min"), Ok((30, 60)));
        assert_eq!(rate("100/10s"), Ok((100, 10)));
        assert_eq!(rate(" 5 / 2hour "), Ok((5, 7200)));
        assert_eq!(rate("1/day"), Ok((1, 86_400)));
        for bad in [
            "",
            "30",
            "0/min",
            "30/0s",
            "30/fortnight",
            "-1/s",
            "x/s",
            "1/99999999999999999999d",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} must be refused");
        }
        let parsed: Rate = "100/10s".parse().unwrap();
        assert_eq!(parsed.interval(), Duration::from_millis(100));
        assert_eq!(parsed.to_string().parse::<Rate>(), Ok(parsed));
    }
}
