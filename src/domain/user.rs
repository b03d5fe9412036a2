use super::Invalid;

pub const USERNAME_MAX_CHARS: usize = 32;
pub const PASSWORD_MAX_CHARS: usize = 128;
pub const EMAIL_MAX_BYTES: usize = 254;
pub const PUBLIC_KEY_MAX_BYTES: usize = 16 * 1024;

/// A username as registered. Comparisons use [`Username::key`], its lowercase form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let invalid = |m: &str| Invalid::new("username", m);
        let chars = raw.chars().count();
        if chars == 0 || chars > USERNAME_MAX_CHARS {
            return Err(invalid("must be 1 to 32 characters"));
        }
        // These characters keep a username safe inside a URL path segment, a
        // "{sender}: {text}" frame and a log line.
        if !raw
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(invalid(
                "may contain only letters, digits, '_', '-' and '.'",
            ));
        }
        if raw.chars().all(|c| c == '.') {
            return Err(invalid("must contain a letter, a digit, '_' or '-'"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The case-folded form that uniqueness and look-ups go by.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    /// The look-up key of a name a client gave, or `None` when no user can have
    /// that name (so there is nothing to look up).
    pub fn lookup_key(raw: &str) -> Option<String> {
        Self::parse(raw).ok().map(|u| u.key())
    }

    /// The case-folded form of a search string, or `None` when it holds a
    /// character no username has (so nothing can match).
    pub fn search_needle(raw: &str) -> Option<String> {
        let fits = !raw.is_empty()
            && raw.chars().count() <= USERNAME_MAX_CHARS
            && raw.chars().all(is_username_char);
        fits.then(|| raw.to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_username_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

#[derive(Debug, Clone)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let invalid = || Invalid::new("email", "value is not a valid email address");
        if raw.len() > EMAIL_MAX_BYTES {
            return Err(invalid());
        }
        let parsed: email_address::EmailAddress = raw.parse().map_err(|_| invalid())?;
        // Display names ("Bob <bob@example.com>") are addresses to the parser but not to us.
        if parsed.as_str() != raw || raw.contains(['<', '>', ' ']) {
            return Err(invalid());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plaintext password on its way to the hasher. Its `Debug` never shows it.
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        let chars = raw.chars().count();
        if chars == 0 || chars > PASSWORD_MAX_CHARS {
            return Err(Invalid::new("password", "must be 1 to 128 characters"));
        }
        Ok(Self(raw))
    }

    /// A password offered at login. It is not checked against the registration rules:
    /// one that breaks them simply matches no stored hash, at the same cost.
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

#[derive(Debug, Clone)]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        if raw.trim().is_empty() || raw.len() > PUBLIC_KEY_MAX_BYTES || raw.contains('\0') {
            return Err(Invalid::new(
                "public_key",
                "must be 1 to 16384 bytes of text without NUL characters",
            ));
        }
        Ok(Self(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A P2P port a client declares: 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl Port {
    pub fn parse(raw: i64, field: &'static str) -> Result<Self, Invalid> {
        match u16::try_from(raw) {
            Ok(port) if port != 0 => Ok(Self(port)),
            _ => Err(Invalid::new(field, "must be an integer from 1 to 65535")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("张伟_01").is_ok());
        assert!(Username::parse("a.b-c").is_ok());
        for bad in ["", "..", "a b", "a/b", "a%", "x:y", &"a".repeat(33)] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Username::parse("Alice").unwrap().key(), "alice");
        assert_eq!(Username::lookup_key("BoB"), Some("bob".into()));
        assert_eq!(Username::lookup_key("b\0b"), None);
        assert_eq!(Username::search_needle("L_I"), Some("l_i".into()));
        assert_eq!(Username::search_needle("%"), None);
    }

    #[test]
    fn emails() {
        assert!(Email::parse("bob@example.com").is_ok());
        for bad in ["bob", "bob@", "Bob <bob@example.com>", "@x.org", ""] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(Port::parse(6953, "port"), Ok(Port(6953)));
        for bad in [0, -1, 65536] {
            assert!(Port::parse(bad, "port").is_err());
        }
    }

    #[test]
    fn password_debug_is_redacted() {
        let p = Password::parse("hunter22".into()).unwrap();
        assert!(!format!("{p:?}").contains("hunter22"));
    }
}
