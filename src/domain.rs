//! Values parsed at the edge: once a request deserialises, its fields are known good.
//!
//! Each type deserialises from its raw form through `TryFrom`, so a bad value becomes a 422 that
//! names the rule, and nothing inside re-checks.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Checks that `value`, trimmed, has 1..=`max` characters and no control characters.
fn bounded_text(value: String, what: &str, max: usize) -> Result<String, String> {
    let trimmed = value.trim();
    let length = trimmed.chars().count();
    if length == 0 {
        return Err(format!("{what} must not be empty"));
    }
    if length > max {
        return Err(format!("{what} must be at most {max} characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(format!("{what} must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                bounded_text(value, $what, $max).map(Self)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl $name {
            /// The parsed value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

text_type!(
    /// A person's or group's display name.
    Name, "name", 200
);
text_type!(
    /// A tag's label.
    TagName, "tag name", 100
);
text_type!(
    /// Free text describing something (a group).
    Description, "description", 2000
);

/// An e-mail address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl TryFrom<String> for Email {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let normalised = value.trim().to_lowercase();
        if normalised.len() > 254 || !email_address::EmailAddress::is_valid(&normalised) {
            return Err(format!("{normalised:?} is not a valid e-mail address"));
        }
        Ok(Self(normalised))
    }
}

impl From<Email> for String {
    fn from(value: Email) -> String {
        value.0
    }
}

impl Email {
    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: 8 to 128 characters. Never printed.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Password(String);

impl TryFrom<String> for Password {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        match value.chars().count() {
            0..8 => Err("password must be at least 8 characters".into()),
            129.. => Err("password must be at most 128 characters".into()),
            _ => Ok(Self(value)),
        }
    }
}

impl Password {
    /// The secret itself, to hash.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A password as given to be checked (sign-in, the current one before a change): any text,
/// since a check must not tell what a password may look like. Never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to verify.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret itself, owned, for a verification on another thread.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The text of a chat message: 1 to 4000 characters, not blank, no control characters other
/// than line breaks and tabs. Kept as written (not trimmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageContent(String);

/// Longest message accepted, in characters.
pub const MESSAGE_MAX_CHARS: usize = 4000;

impl TryFrom<String> for MessageContent {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        if value.trim().is_empty() {
            return Err("message content must not be empty".into());
        }
        if value.chars().count() > MESSAGE_MAX_CHARS {
            return Err(format!(
                "message content must be at most {MESSAGE_MAX_CHARS} characters"
            ));
        }
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err("message content must not contain control characters".into());
        }
        Ok(Self(value))
    }
}

impl From<MessageContent> for String {
    fn from(value: MessageContent) -> String {
        value.0
    }
}

text_type!(
    /// A phone number as the visitor typed it.
    Phone, "phone", 50
);
text_type!(
    /// A client's id for a message it sends, echoed back so it can de-duplicate.
    ClientMessageId, "clientMessageId", 100
);

/// An `http(s)` URL of at most 2048 characters (avatars).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);

impl TryFrom<String> for HttpUrl {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let value = value.trim().to_owned();
        let has_host = value.split_once("://").is_some_and(|(scheme, rest)| {
            matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.starts_with('/')
        });
        let odd = |c: char| c.is_whitespace() || c.is_control();
        if !has_host || value.len() > 2048 || value.chars().any(odd) {
            return Err("url must be an http(s) URL of at most 2048 characters".into());
        }
        Ok(Self(value))
    }
}

impl From<HttpUrl> for String {
    fn from(value: HttpUrl) -> String {
        value.0
    }
}

/// A CSS hex colour, `#rrggbb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Color(String);

impl TryFrom<String> for Color {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        let valid = value.len() == 7
            && value.starts_with('#')
            && value[1..].chars().all(|c| c.is_ascii_hexdigit());
        if !valid {
            return Err("color must look like #1a2b3c".into());
        }
        Ok(Self(value.to_lowercase()))
    }
}

impl From<Color> for String {
    fn from(value: Color) -> String {
        value.0
    }
}

/// An integer setting that must lie in `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i32")]
pub struct Bounded<const MIN: i32, const MAX: i32>(i32);

impl<const MIN: i32, const MAX: i32> TryFrom<i64> for Bounded<MIN, MAX> {
    type Error = String;
    fn try_from(value: i64) -> Result<Self, String> {
        if (i64::from(MIN)..=i64::from(MAX)).contains(&value) {
            Ok(Self(value as i32))
        } else {
            Err(format!("must be between {MIN} and {MAX}, got {value}"))
        }
    }
}

impl<const MIN: i32, const MAX: i32> From<Bounded<MIN, MAX>> for i32 {
    fn from(value: Bounded<MIN, MAX>) -> i32 {
        value.0
    }
}

impl<const MIN: i32, const MAX: i32> Bounded<MIN, MAX> {
    /// The value.
    pub fn get(self) -> i32 {
        self.0
    }
}

/// Concurrent chats an agent may hold.
pub type Capacity = Bounded<1, 100>;

/// Deserialises a field that may be absent (keep), `null` (clear) or a value (set).
pub fn nullable<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::try_from("  Ana ".to_owned()).unwrap().as_str(), "Ana");
        assert!(Name::try_from("   ".to_owned()).is_err());
        assert!(Name::try_from("a".repeat(201)).is_err());
        assert!(Name::try_from("a\u{0}b".to_owned()).is_err());
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::try_from(" Ana@Example.COM ".to_owned())
                .unwrap()
                .as_str(),
            "ana@example.com"
        );
        for bad in ["", "ana", "ana@", "@example.com", "a b@example.com"] {
            assert!(Email::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn passwords_have_bounds_and_never_print() {
        assert!(Password::try_from("short".to_owned()).is_err());
        assert!(Password::try_from("x".repeat(129)).is_err());
        let password = Password::try_from("long enough".to_owned()).unwrap();
        assert_eq!(format!("{password:?}"), "Password(***)");
    }

    #[test]
    fn bounded_integers_reject_out_of_range() {
        assert_eq!(Capacity::try_from(6).unwrap().get(), 6);
        assert!(Capacity::try_from(0).is_err());
        assert!(Capacity::try_from(101).is_err());
        assert!(Capacity::try_from(i64::MAX).is_err());
    }

    #[test]
    fn messages_keep_their_text_but_not_blanks_or_controls() {
        let text = "  hello\nworld\t".to_owned();
        assert_eq!(
            String::from(MessageContent::try_from(text.clone()).unwrap()),
            text
        );
        assert!(MessageContent::try_from(" \n ".to_owned()).is_err());
        assert!(MessageContent::try_from("x".repeat(MESSAGE_MAX_CHARS + 1)).is_err());
        assert!(MessageContent::try_from("é".repeat(MESSAGE_MAX_CHARS)).is_ok());
        assert!(MessageContent::try_from("bell\u{7}".to_owned()).is_err());
    }

    #[test]
    fn urls_and_colors() {
        assert!(HttpUrl::try_from("https://cdn.example.com/a.png".to_owned()).is_ok());
        for bad in ["ftp://x", "https://", "javascript:alert(1)", "https:///x"] {
            assert!(
                HttpUrl::try_from(bad.to_owned()).is_err(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            Color::try_from("#A1B2C3".to_owned()).unwrap(),
            Color("#a1b2c3".into())
        );
        assert!(Color::try_from("red".to_owned()).is_err());
    }
}
