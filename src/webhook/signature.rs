//! Webhook signature verification over the raw body bytes.
//!
//! Nango signs each webhook with the environment's webhook signing key:
//! `X-Nango-Hmac-Sha256` is hex(HMAC-SHA256(key, body)). After a key rotation the old key
//! keeps signing for a few minutes, so a verifier accepts the current and the previous
//! key. The legacy `X-Nango-Signature` (hex(SHA-256(key ‖ body))) is accepted only when
//! explicitly enabled. Comparisons are constant-time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::secret::SecretKey;

/// The signature header to use.
pub const HMAC_HEADER: &str = "x-nango-hmac-sha256";
/// The deprecated signature header.
pub const LEGACY_HEADER: &str = "x-nango-signature";

/// Why a webhook's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature header.
    #[error("the webhook has no {HMAC_HEADER} header")]
    Missing,
    /// The header is not hex of the right length.
    #[error("the webhook's signature header is not a hex SHA-256 digest")]
    Malformed,
    /// No key produces this signature.
    #[error("the webhook's signature does not match any signing key")]
    Mismatch,
}

/// Checks webhook signatures against the current and previous signing keys.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    keys: Vec<SecretKey>,
    allow_legacy: bool,
}

impl WebhookVerifier {
    /// A verifier for one signing key.
    pub fn new(key: impl Into<SecretKey>) -> Self {
        WebhookVerifier {
            keys: vec![key.into()],
            allow_legacy: false,
        }
    }

    /// Also accept `key` (the previous key during a rotation).
    pub fn with_key(mut self, key: impl Into<SecretKey>) -> Self {
        self.keys.push(key.into());
        self
    }

    /// Accept the deprecated `X-Nango-Signature` header when `X-Nango-Hmac-Sha256` is
    /// absent.
    pub fn allow_legacy_signature(mut self, allow: bool) -> Self {
        self.allow_legacy = allow;
        self
    }

    /// How many keys are accepted.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Verify `body` against the values of the signature headers.
    pub fn verify(
        &self,
        hmac_header: Option<&str>,
        legacy_header: Option<&str>,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        if let Some(sig) = hmac_header {
            let sig = decode(sig)?;
            for key in &self.keys {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) else {
                    continue;
                };
                mac.update(body);
                if mac.verify_slice(&sig).is_ok() {
                    return Ok(());
                }
            }
            return Err(SignatureError::Mismatch);
        }
        match legacy_header {
            Some(sig) if self.allow_legacy => {
                let sig = decode(sig)?;
                for key in &self.keys {
                    let mut h = Sha256::new();
                    h.update(key.expose().as_bytes());
                    h.update(body);
                    if constant_time_eq(&h.finalize(), &sig) {
                        return Ok(());
                    }
                }
                Err(SignatureError::Mismatch)
            }
            _ => Err(SignatureError::Missing),
        }
    }

    /// The `X-Nango-Hmac-Sha256` value Nango would send for `body` with `key`.
    pub fn sign(key: &SecretKey, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The legacy `X-Nango-Signature` value for `body` with `key`.
    pub fn sign_legacy(key: &SecretKey, body: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(key.expose().as_bytes());
        h.update(body);
        hex::encode(h.finalize())
    }
}

fn decode(sig: &str) -> Result<Vec<u8>, SignatureError> {
    let bytes = hex::decode(sig.trim()).map_err(|_| SignatureError::Malformed)?;
    if bytes.len() != 32 {
        return Err(SignatureError::Malformed);
    }
    Ok(bytes)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"connectionId":"acme","type":"sync"}"#;

    #[test]
    fn known_vector() {
        // HMAC-SHA256 of "The quick brown fox jumps over the lazy dog" with key "key".
        let sig = WebhookVerifier::sign(
            &SecretKey::new("key"),
            b"The quick brown fox jumps over the lazy dog",
        );
        assert_eq!(
            sig,
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn current_and_previous_keys_are_accepted() {
        let current = SecretKey::new("new-key");
        let previous = SecretKey::new("old-key");
        let v = WebhookVerifier::new(current.clone()).with_key(previous.clone());
        assert_eq!(
            v.verify(Some(&WebhookVerifier::sign(&current, BODY)), None, BODY),
            Ok(())
        );
        assert_eq!(
            v.verify(Some(&WebhookVerifier::sign(&previous, BODY)), None, BODY),
            Ok(())
        );
        let other = WebhookVerifier::sign(&SecretKey::new("attacker"), BODY);
        assert_eq!(
            v.verify(Some(&other), None, BODY),
            Err(SignatureError::Mismatch)
        );
        let sig = WebhookVerifier::sign(&current, BODY);
        assert_eq!(
            v.verify(Some(&sig), None, b"{\"tampered\":1}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(Some(&sig.to_uppercase()), None, BODY),
            Ok(()),
            "hex case does not matter"
        );
    }

    #[test]
    fn missing_and_malformed_signatures() {
        let v = WebhookVerifier::new("k");
        assert_eq!(v.verify(None, None, BODY), Err(SignatureError::Missing));
        assert_eq!(
            v.verify(Some("zz"), None, BODY),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            v.verify(Some("abcd"), None, BODY),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn legacy_signature_only_when_enabled() {
        let key = SecretKey::new("k");
        let legacy = WebhookVerifier::sign_legacy(&key, BODY);
        assert_eq!(
            WebhookVerifier::new(key.clone()).verify(None, Some(&legacy), BODY),
            Err(SignatureError::Missing)
        );
        let v = WebhookVerifier::new(key.clone()).allow_legacy_signature(true);
        assert_eq!(v.verify(None, Some(&legacy), BODY), Ok(()));
        assert_eq!(
            v.verify(
                None,
                Some(&WebhookVerifier::sign_legacy(&SecretKey::new("x"), BODY)),
                BODY
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn debug_hides_keys() {
        let v = WebhookVerifier::new("super-secret-signing-key");
        assert!(!format!("{v:?}").contains("super-secret"));
    }
}
