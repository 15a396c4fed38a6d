//! A secret string (API key, webhook signing key) that never prints itself.

use std::fmt;

/// A secret: Nango's environment secret key, or a webhook signing key.
///
/// `Debug` and `Display` print `***`, so a secret cannot leak through logs, error
/// messages or `{:?}` of a struct that holds it. Use [`SecretKey::expose`] only where
/// the value is really sent (the `Authorization` header, an HMAC key).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Box<str>);

impl SecretKey {
    /// Wrap a secret value. Surrounding whitespace (a trailing newline from a file or an
    /// environment variable) is removed.
    pub fn new(value: impl Into<String>) -> Self {
        let value: String = value.into();
        SecretKey(value.trim().into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for SecretKey {
    fn from(value: String) -> Self {
        SecretKey::new(value)
    }
}

impl From<&str> for SecretKey {
    fn from(value: &str) -> Self {
        SecretKey::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_itself() {
        let key = SecretKey::new("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c\n");
        assert_eq!(format!("{key}"), "***");
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
        assert!(!format!("{key:#?}").contains("4f1a"));
        assert_eq!(key.expose(), "4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c");
    }
}
