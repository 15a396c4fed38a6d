//! Secrets: a string (API key, webhook signing key) that never prints itself, and the
//! redaction of passwords in URLs.

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

/// `url` with its passwords replaced by `***`, for messages and `Debug` output.
///
/// Two places hold a password in a database URL, and both are redacted: the user info
/// (`postgres://user:PASSWORD@host/db`) and the value of a `password` or `sslpassword`
/// query parameter (`?password=PASSWORD`; names compared case-insensitively after
/// percent-decoding, as libpq and sqlx read them). The user info is taken to end at the
/// last `@` before the query, so a password holding an unescaped `/` or `@` is redacted
/// too. Everything else is kept as written, percent-encoding included.
pub fn redact_url(url: &str) -> String {
    let query_start = url.find(['?', '#']).unwrap_or(url.len());
    let mut out = String::with_capacity(url.len());
    let mut head = &url[..query_start];
    if let Some(scheme_end) = head.find("://") {
        let rest = scheme_end + 3;
        if let Some(at) = head[rest..].rfind('@') {
            let userinfo = &head[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.push_str(&head[..rest + colon + 1]);
                out.push_str("***");
                head = &head[rest + at..];
            }
        }
    }
    out.push_str(head);
    let tail = &url[query_start..];
    let Some(query) = tail.strip_prefix('?') else {
        out.push_str(tail);
        return out;
    };
    let (query, fragment) = match query.find('#') {
        Some(i) => query.split_at(i),
        None => (query, ""),
    };
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((key, _)) if is_password_key(key) => {
                out.push_str(key);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    out
}

/// Whether a query parameter name is, once percent-decoded, `password` or
/// `sslpassword` (in any case).
fn is_password_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    decoded.eq_ignore_ascii_case(b"password") || decoded.eq_ignore_ascii_case(b"sslpassword")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        let cases = [
            // The user info.
            ("postgres://u:pw@h:5432/db", "postgres://u:***@h:5432/db"),
            ("postgres://u:p@w@h/db", "postgres://u:***@h/db"),
            ("postgres://u:@h/db", "postgres://u:***@h/db"),
            ("postgres://u:pa/ss@h/db?x=1", "postgres://u:***@h/db?x=1"),
            // Percent-encoded passwords go whole.
            ("postgres://u:p%40ss%2Fw%3A@h/db", "postgres://u:***@h/db"),
            // Query parameters, any case, percent-encoded names.
            (
                "postgres://u@h/db?password=x&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "postgres://u@h/db?sslmode=require&PassWord=hunter2",
                "postgres://u@h/db?sslmode=require&PassWord=***",
            ),
            (
                "postgres://u@h/db?pass%77ord=hunter2",
                "postgres://u@h/db?pass%77ord=***",
            ),
            (
                "postgres://u@h/db?password=p%26ss%3Dx&x=1",
                "postgres://u@h/db?password=***&x=1",
            ),
            (
                "postgres://h/db?sslpassword=k#f",
                "postgres://h/db?sslpassword=***#f",
            ),
            // Both at once.
            (
                "postgresql://u:a@h/db?password=b",
                "postgresql://u:***@h/db?password=***",
            ),
            // Nothing to redact.
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?password", "postgres://h/db?password"),
            ("postgres://h/db?passwords=x", "postgres://h/db?passwords=x"),
            ("sqlite://a.db", "sqlite://a.db"),
            ("sled:///tmp/x@y", "sled:///tmp/x@y"),
            ("memory://", "memory://"),
            ("not a url", "not a url"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
        }
    }

    #[test]
    fn secret_never_prints_itself() {
        let key = SecretKey::new("4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c\n");
        assert_eq!(format!("{key}"), "***");
        assert_eq!(format!("{key:?}"), "SecretKey(***)");
        assert!(!format!("{key:#?}").contains("4f1a"));
        assert_eq!(key.expose(), "4f1a7c2e-9b3d-4e8f-a6c5-1d2e3f4a5b6c");
    }
}
