//! Passwords chosen by users, checked as NIST SP 800-63B (5.1.1.2) asks: long
//! enough, and not one that attackers try first.

use std::{collections::HashSet, sync::LazyLock};

use super::Invalid;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 128;

/// The 20,000 most common passwords, lowercased, one per line: the list
/// Django ships (`django/contrib/auth/common-passwords.txt.gz`, Django 5.1.4,
/// BSD-3-Clause), which Royce Williams compiled from breach corpora
/// (<https://gist.github.com/roycewilliams/226886fd01572964e1431ac8afc999ce>).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect()
});

/// What a new password must satisfy besides its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Refuse the most common passwords (a deployment whose existing clients
    /// register with such passwords turns this off).
    pub refuse_common: bool,
}

/// A plaintext password on its way to the hasher. Its `Debug` never shows it.
pub struct Password(String);

impl Password {
    /// A new password (registration, password change): 8 to 128 characters
    /// (Unicode scalar values; spaces count), and not a common one when the
    /// policy says so, compared regardless of case.
    pub fn parse(raw: String, policy: PasswordPolicy) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars < PASSWORD_MIN_CHARS {
            return Err(Invalid::new(
                "password",
                format!("must be at least {PASSWORD_MIN_CHARS} characters"),
            ));
        }
        if chars > PASSWORD_MAX_CHARS {
            return Err(Invalid::new(
                "password",
                format!("must be at most {PASSWORD_MAX_CHARS} characters"),
            ));
        }
        if policy.refuse_common && COMMON.contains(raw.trim().to_lowercase().as_str()) {
            return Err(Invalid::new(
                "password",
                "is one of the most commonly used passwords: choose another",
            ));
        }
        Ok(Self(raw))
    }

    /// A password offered at login. It is not checked against the registration rules:
    /// one that breaks them simply matches no stored hash, at the same cost,
    /// and accounts registered before a rule keep logging in.
    pub fn to_verify(raw: String) -> Self {
        Self(raw)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: PasswordPolicy = PasswordPolicy {
        refuse_common: true,
    };
    const LAX: PasswordPolicy = PasswordPolicy {
        refuse_common: false,
    };

    #[test]
    fn the_list_is_shipped_whole() {
        assert!(COMMON.len() >= 19_000, "{} common passwords", COMMON.len());
    }

    #[test]
    fn short_long_and_common_passwords_are_refused() {
        for (raw, why) in [
            ("1234567", "at least 8"),
            ("", "at least 8"),
            ("sieben7", "at least 8"),
            ("12345678", "commonly used"),
            ("Password123", "commonly used"),
            ("iloveyou", "commonly used"),
        ] {
            let refused = Password::parse(raw.into(), STRICT).unwrap_err();
            assert!(
                refused.message.contains(why),
                "{raw:?}: {}",
                refused.message
            );
        }
        let long = "x".repeat(PASSWORD_MAX_CHARS + 1);
        assert!(Password::parse(long, STRICT).is_err());
        for fine in ["correct horse battery", "pw-alice-secret", "ÄÖÜäöüßé"] {
            assert!(Password::parse(fine.into(), STRICT).is_ok(), "{fine:?}");
        }
    }

    #[test]
    fn the_common_check_can_be_turned_off_but_not_the_length() {
        assert!(Password::parse("password123".into(), LAX).is_ok());
        assert!(Password::parse("1234567".into(), LAX).is_err());
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("hunter22-x".into(), LAX).unwrap();
        assert!(!format!("{p:?}").contains("hunter22"));
    }
}
