//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the base64 part of a `whsec_` secret.
//! Several secrets sign at once (space-separated) so receivers can rotate without downtime.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{DeliveryError, DeliveryKind};

/// A decoded signing key, with its HMAC state keyed once (a delivery clones it instead of
/// hashing the key again).
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
    keyed: Hmac<Sha256>,
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for SigningKey {}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// Decodes `whsec_<base64>` (the prefix is optional, as in the reference libraries).
    ///
    /// # Errors
    /// Not base64, or shorter than 24 bytes (the spec's minimum).
    pub fn from_secret(secret: &str) -> Result<Self, DeliveryError> {
        let unusable = |detail: String| DeliveryError::new(DeliveryKind::Secret, detail);
        let encoded = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
        let key = STANDARD.decode(encoded).map_err(|_| unusable("a signing secret is `whsec_` + base64".to_owned()))?;
        if key.len() < 24 {
            return Err(unusable(format!(
                "a signing secret needs at least 24 bytes of key; this one has {}",
                key.len()
            )));
        }
        let keyed = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("HMAC takes any key length");
        Ok(Self { key, keyed })
    }
}

/// The `webhook-signature` header value for one delivery.
#[must_use]
pub(crate) fn sign(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    // "v1," + 44 base64 characters per key, space-separated.
    let mut header = String::with_capacity(48 * keys.len());
    for key in keys {
        let mut mac = key.keyed.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        if !header.is_empty() {
            header.push(' ');
        }
        header.push_str("v1,");
        STANDARD.encode_string(mac.finalize().into_bytes(), &mut header);
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the Standard Webhooks specification's reference tests.
    #[test]
    fn matches_the_reference_vector() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_key() {
        let a = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = SigningKey::from_secret(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).unwrap();
        let sig = sign(&[a, b], "id", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn short_or_bad_secrets_are_refused() {
        assert!(SigningKey::from_secret("whsec_c2hvcnQ=").is_err());
        assert!(SigningKey::from_secret("whsec_not base64!").is_err());
    }
}
