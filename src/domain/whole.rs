//! Whole numbers as JSON Schema counts them.

/// A JSON number that is a whole 64-bit integer, written with or without a
/// fraction (`8080` or `8080.0`: JSON Schema counts both as integers).
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            // Strictly inside: a float at either bound may have been rounded from beyond it.
            .filter(|f| f.fract() == 0.0 && *f > i64::MIN as f64 && *f < i64::MAX as f64)
            .map(|f| f as i64)
    })
}

/// A JSON integer as JSON Schema counts one: `5`, or `5.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub i64);

impl<'de> serde::Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(deserializer)?;
        whole_number(&number)
            .map(Whole)
            .ok_or_else(|| serde::de::Error::custom("must be a whole number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_with_or_without_a_fraction_and_none_beyond_i64() {
        let number = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(whole_number(&number("5")), Some(5));
        assert_eq!(whole_number(&number("5.0")), Some(5));
        assert_eq!(
            whole_number(&number("-9223372036854775808")),
            Some(i64::MIN)
        );
        for beyond in [
            "5.5",
            "1e300",
            "-9223372036854775809",
            "9223372036854775808",
        ] {
            assert_eq!(whole_number(&number(beyond)), None, "{beyond}");
        }
    }
}
