use super::Invalid;

pub const USERNAME_MAX_CHARS: usize = 32;
pub const EMAIL_MAX_BYTES: usize = 254;
pub const PUBLIC_KEY_MAX_BYTES: usize = 16 * 1024;

/// A username as registered, shown as it was written. Two names that a
/// reader could mistake for one another cannot both exist: uniqueness goes by
/// [`Username::skeleton`], and look-ups by [`Username::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

/// Names no user may take, nor anything that looks like them: the relay's own
/// notices speak as `系统消息` (which reads the same in traditional
/// characters), and the others are what users take for staff.
const RESERVED: [&str; 10] = [
    "系统消息",
    "系統消息",
    "system",
    "admin",
    "administrator",
    "root",
    "moderator",
    "support",
    "secchat",
    "server",
];

impl Username {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let invalid = |m: &str| Invalid::new("username", m);
        let chars = raw.chars().count();
        if chars == 0 || chars > USERNAME_MAX_CHARS {
            return Err(invalid("must be 1 to 32 characters"));
        }
        // Letters and digits of the Unicode general security profile (UTS #39):
        // no invisible, filler, compatibility (fullwidth, mathematical) or
        // obsolete characters. With '_', '-' and '.', a username stays safe
        // inside a URL path segment, a "{sender}: {text}" frame and a log line.
        if !raw.chars().all(is_username_char) {
            return Err(invalid(
                "may contain only letters, digits, '_', '-' and '.' (no invisible, fullwidth or styled characters)",
            ));
        }
        if raw.chars().all(|c| c == '.') {
            return Err(invalid("must contain a letter, a digit, '_' or '-'"));
        }
        let name = Self(raw.to_owned());
        let (skeleton, shape) = (name.skeleton(), name.shape());
        if RESERVED
            .iter()
            .any(|r| skeleton_of(r) == skeleton || shape_of(r) == shape)
        {
            return Err(invalid("is reserved"));
        }
        Ok(name)
    }

    /// A name registered under earlier rules, as stored.
    pub fn registered(raw: &str) -> Self {
        Self(raw.to_owned())
    }

    /// The form look-ups go by: NFKC with full case folding, so that `Alice`,
    /// `ALICE` and `STRAßE`/`strasse` name one user.
    pub fn key(&self) -> String {
        fold(&self.0)
    }

    /// The form uniqueness goes by: the confusable skeleton (UTS #39) of the
    /// folded name, so that `аlice` (Cyrillic а), `a1ice` and `alice` are one.
    pub fn skeleton(&self) -> String {
        skeleton_of(&self.0)
    }

    /// The second form uniqueness goes by: the confusable skeleton of the
    /// name as written, then folded, so that `aIice` (a capital I, which
    /// looks like an l) and `alice` are one, although folding alone makes
    /// the I an i.
    pub fn shape(&self) -> String {
        shape_of(&self.0)
    }

    /// The look-up key of a name (or part of one, to search for) a client
    /// gave, or `None` when no user's name can hold it (so there is nothing to
    /// look up).
    pub fn lookup_key(raw: &str) -> Option<String> {
        let fits = !raw.is_empty()
            && raw.chars().count() <= USERNAME_MAX_CHARS
            && raw.chars().all(is_name_text);
        fits.then(|| fold(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A character a username may hold.
fn is_username_char(c: char) -> bool {
    is_name_text(c) && unicode_security::GeneralSecurityProfile::identifier_allowed(c)
}

/// A character that may stand for one of a username's, in a name a client
/// gives: a fullwidth or styled letter folds to a plain one.
fn is_name_text(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// NFKC, full Unicode case folding, and NFKC again (folding can leave a
/// string unnormalised). ASCII, the common case on the path of every directed
/// message, is its own NFKC form and folds to lowercase.
fn fold(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    fold_unicode(s)
}

fn fold_unicode(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let nfkc: String = s.nfkc().collect();
    let folded = icu_casemap::CaseMapper::new()
        .fold_string(&nfkc)
        .into_owned();
    folded.nfkc().collect()
}

/// The folded skeleton of `s`, folded again until it stops changing (a
/// prototype may be a capital, as `0` → `O`).
fn skeleton_of(s: &str) -> String {
    settle(fold(s))
}

/// The skeleton of `s` as written, folded, then settled like
/// [`skeleton_of`].
fn shape_of(s: &str) -> String {
    settle(fold(&unicode_security::skeleton(s).collect::<String>()))
}

/// Skeleton and fold, again, until the text stops changing.
fn settle(mut current: String) -> String {
    for _ in 0..4 {
        let next = fold(&unicode_security::skeleton(&current).collect::<String>());
        if next == current {
            break;
        }
        current = next;
    }
    current
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

#[derive(Debug, Clone)]
pub struct PublicKey(String);

impl PublicKey {
    /// Base64 (standard or URL-safe) text, or a PEM block, which may also hold
    /// spaces and line breaks: nothing that a client showing the key could
    /// render as a control (ESC, bidi overrides, a line that looks like
    /// someone else's).
    pub fn parse(raw: String) -> Result<Self, Invalid> {
        let invalid = |m: &str| Invalid::new("public_key", m);
        if raw.trim().is_empty() || raw.len() > PUBLIC_KEY_MAX_BYTES {
            return Err(invalid("must be 1 to 16384 bytes"));
        }
        let base64 =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
        let pem = raw.starts_with("-----BEGIN ") && raw.trim_end().ends_with("-----");
        let bytes = raw.as_bytes();
        let fits = raw.char_indices().all(|(i, c)| {
            base64(c)
                || (pem && matches!(c, ' ' | '\n'))
                || (pem && c == '\r' && bytes.get(i + 1) == Some(&b'\n'))
        });
        if !fits {
            return Err(invalid(
                "must be base64 text (letters, digits, '+', '/', '=', '-', '_'), or a PEM block, which may also hold spaces and line breaks",
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
        assert!(Username::parse("STRAßE").is_ok());
        for bad in ["", "..", "a b", "a/b", "a%", "x:y", &"a".repeat(33)] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Username::parse("Alice").unwrap().key(), "alice");
        assert_eq!(Username::lookup_key("BoB"), Some("bob".into()));
        assert_eq!(Username::lookup_key("b\0b"), None);
        assert_eq!(Username::lookup_key("L_I"), Some("l_i".into()));
        assert_eq!(Username::lookup_key("%"), None);
    }

    #[test]
    fn invisible_styled_and_reserved_names_are_refused() {
        for bad in [
            "ａｌｉｃｅ",    // fullwidth
            "𝐚𝐥𝐢𝐜𝐞",         // mathematical bold
            "ㅤ",              // Hangul letter filler
            "ᅟ",            // Hangul choseong filler
            "ali\u{200b}ce", // zero-width space
            "ali\u{202e}ce", // right-to-left override
            "\u{212a}ate",   // Kelvin sign
            "系统消息",
            "系統消息",
            "System",
            "ADMIN",
            "аdmin",  // Cyrillic а
            "sуstem", // Cyrillic у
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lookalikes_share_a_skeleton_and_cases_share_a_key() {
        let skeleton = |s: &str| skeleton_of(s);
        let alice = skeleton("alice");
        for lookalike in ["аlice", "ALICE", "a1ice", "alıce", "ａｌｉｃｅ"] {
            assert_eq!(skeleton(lookalike), alice, "{lookalike:?}");
        }
        assert_ne!(skeleton("alicia"), alice);
        // Folding first makes a capital I an i; as written it reads as an l.
        assert_ne!(skeleton("aIice"), alice);
        for lookalike in ["aIice", "AIice", "a1ice", "аlice"] {
            assert_eq!(shape_of(lookalike), shape_of("alice"), "{lookalike:?}");
        }
        assert_ne!(shape_of("ali"), shape_of("all"), "a dotted i is not an l");
        assert_eq!(skeleton("STRAßE"), skeleton("strasse"));
        assert_eq!(
            Username::parse("STRAßE").unwrap().key(),
            Username::parse("strasse").unwrap().key()
        );
        // Names a client gives in styled forms find the plain user.
        assert_eq!(Username::lookup_key("ＡＬＩＣＥ"), Some("alice".into()));
        assert_eq!(Username::lookup_key("\u{212a}ate"), Some("kate".into()));
    }

    proptest::proptest! {
        /// The ASCII shortcut folds as the full Unicode path does.
        #[test]
        fn ascii_folds_like_unicode(s in "[ -~]{0,40}") {
            proptest::prop_assert_eq!(fold(&s), fold_unicode(&s));
        }
    }

    #[test]
    fn public_keys_are_base64_or_pem() {
        let ok = |k: &str| PublicKey::parse(k.into()).is_ok();
        assert!(ok(
            "MCowBQYDK2VuAyEA9s4qL4Y1Tn5lYQmW+Jc/f0c7h0wJzE0gVt8zLxH2Xw="
        ));
        assert!(ok("pk-alice_1"));
        assert!(ok(
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VuAyEA\n-----END PUBLIC KEY-----\n"
        ));
        assert!(ok(
            "-----BEGIN PUBLIC KEY-----\r\nMCow\r\n-----END PUBLIC KEY-----"
        ));
        for bad in [
            "",
            " ",
            "abc\u{1b}[31m",
            "abc\u{202e}",
            "abc\r\ndef",
            "abc def",
            "abc\n",
            "ключ",
            "-----BEGIN PUBLIC KEY-----\nMC\u{1b}ow\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\rMCow\n-----END PUBLIC KEY-----",
        ] {
            assert!(!ok(bad), "{bad:?} accepted");
        }
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
}
