//! Console sessions: a signed cookie, so any replica accepts what another issued (replicas
//! share nothing) when they share `console.session_key`.
//!
//! The cookie is `v1.<payload>.<mac>`: the payload (base64url JSON) names the participant, a
//! fingerprint of the token signed in with, the expiry and a random nonce; the mac is
//! HMAC-SHA256 over it. A session ends at its expiry, at sign-out (the nonce is remembered
//! as revoked on this replica until it would have expired anyway; bounded), when its token
//! or the participant's `admin` flag is removed from configuration (checked on every request),
//! or for all at once when the key changes. The CSRF token is HMAC(key, "csrf" + nonce):
//! derived, so it needs no storage either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ConsoleConfig;
use crate::participants::{Participant, Participants};

/// The session cookie's name (`__Host-` would require `Secure`, which plain HTTP lacks).
pub(crate) const COOKIE: &str = "magistral_console";

/// Revoked nonces kept at most; past it the oldest are dropped first. A dropped nonce's
/// cookie is still bounded by its expiry.
const MAX_REVOKED: usize = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks session cookies.
pub(crate) struct Sessions {
    key: Vec<u8>,
    ttl: Duration,
    /// `Some(true)`: always `Secure`; `Some(false)`: never; `None`: when the request came
    /// over TLS (`X-Forwarded-Proto: https` from the terminating proxy).
    pub(crate) secure: Option<bool>,
    /// Signed-out nonces → their expiry (unix seconds).
    revoked: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("key", &"<redacted>").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// What a cookie carries.
#[derive(Serialize, Deserialize)]
struct Payload {
    /// Participant name.
    p: String,
    /// Fingerprint of the stored hash of the token signed in with.
    t: String,
    /// Expiry, unix seconds.
    e: u64,
    /// Random nonce: the session's identity (CSRF token, revocation).
    n: String,
}

/// A valid session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) participant: String,
    pub(crate) expires: u64,
    pub(crate) csrf: String,
    nonce: String,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Names the token without revealing it (or its stored hash).
fn fingerprint(token_hash: &[u8; 32]) -> String {
    let digest = Sha256::new().chain_update(b"magistral-console-session").chain_update(token_hash).finalize();
    hex::encode(&digest[..12])
}

impl Sessions {
    #[must_use]
    pub(crate) fn new(config: &ConsoleConfig) -> Self {
        let key = match &config.session_key {
            Some(key) => key.expose().as_bytes().to_vec(),
            None => {
                // Sessions then live as long as this process and only on this replica.
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            }
        };
        Self { key, ttl: config.session_ttl, secure: config.secure_cookie, revoked: Mutex::new(HashMap::new()) }
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac
    }

    fn csrf_of(&self, nonce: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"csrf.", nonce.as_bytes()]).finalize().into_bytes())
    }

    /// A new session for `participant`, signed in with the token whose stored hash is
    /// `token_hash`: the cookie value and the session.
    pub(crate) fn issue(&self, participant: &Participant, token_hash: &[u8; 32]) -> (String, Session) {
        let mut nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut nonce);
        let nonce = URL_SAFE_NO_PAD.encode(nonce);
        let payload = Payload {
            p: participant.name.clone(),
            t: fingerprint(token_hash),
            e: now() + self.ttl.as_secs(),
            n: nonce.clone(),
        };
        #[allow(clippy::expect_used)]
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).expect("a plain struct serialises"));
        let signed = format!("v1.{body}");
        let mac = URL_SAFE_NO_PAD.encode(self.mac(&[signed.as_bytes()]).finalize().into_bytes());
        let session =
            Session { participant: payload.p, expires: payload.e, csrf: self.csrf_of(&nonce), nonce: payload.n };
        (format!("{signed}.{mac}"), session)
    }

    /// The session a cookie value carries, when it is signed by this key, not expired, not
    /// signed out, and its participant is still an admin holding the token it signed in with.
    pub(crate) fn verify(&self, cookie: &str, participants: &Participants) -> Option<Session> {
        let (signed, mac) = cookie.rsplit_once('.')?;
        let body = signed.strip_prefix("v1.")?;
        let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
        self.mac(&[signed.as_bytes()]).verify_slice(&mac).ok()?;
        let payload: Payload = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        if payload.e <= now() || self.revoked.lock().ok()?.contains_key(&payload.n) {
            return None;
        }
        let participant = participants.by_name(&payload.p)?;
        let holds_token =
            participant.token_hashes.iter().any(|h| bool::from(fingerprint(h).as_bytes().ct_eq(payload.t.as_bytes())));
        if !participant.admin || !holds_token {
            return None;
        }
        let csrf = self.csrf_of(&payload.n);
        Some(Session { participant: payload.p, expires: payload.e, csrf, nonce: payload.n })
    }

    /// Whether `presented` is this session's CSRF token (compared in constant time).
    pub(crate) fn csrf_matches(session: &Session, presented: &str) -> bool {
        bool::from(session.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// Ends a session on this replica (its cookie is also cleared in the browser).
    pub(crate) fn revoke(&self, session: &Session) {
        if let Ok(mut revoked) = self.revoked.lock() {
            let now = now();
            revoked.retain(|_, expires| *expires > now);
            if revoked.len() >= MAX_REVOKED
                && let Some(oldest) = revoked.iter().min_by_key(|(_, e)| **e).map(|(n, _)| n.clone())
            {
                revoked.remove(&oldest);
            }
            revoked.insert(session.nonce.clone(), session.expires);
        }
    }

    /// How long a new session lasts.
    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participants::hash_token;
    use crate::subject::PatternSet;

    fn catalog_with(admin: bool) -> Participants {
        let mut p = Participant::new("ops".into(), vec![hash_token("t")], PatternSet::default());
        p.admin = admin;
        Participants::new(vec![p])
    }

    fn sessions() -> Sessions {
        Sessions::new(&ConsoleConfig::default())
    }

    #[test]
    fn a_cookie_verifies_only_untampered_and_for_an_admin_holding_its_token() {
        let s = sessions();
        let catalog = catalog_with(true);
        let p = catalog.iter().next().unwrap().clone();
        let (cookie, session) = s.issue(&p, &hash_token("t"));
        let back = s.verify(&cookie, &catalog).unwrap();
        assert_eq!(back.participant, "ops");
        assert_eq!(back.csrf, session.csrf);
        assert!(Sessions::csrf_matches(&back, &session.csrf));
        assert!(!Sessions::csrf_matches(&back, "x"));
        // Another key, a flipped byte, a demoted participant, a rotated token: refused.
        assert!(sessions().verify(&cookie, &catalog).is_none());
        let mut tampered = cookie.clone().into_bytes();
        tampered[5] ^= 1;
        assert!(s.verify(&String::from_utf8(tampered).unwrap(), &catalog).is_none());
        assert!(s.verify(&cookie, &catalog_with(false)).is_none());
        let mut q = Participant::new("ops".into(), vec![hash_token("u")], PatternSet::default());
        q.admin = true;
        let rotated = Participants::new(vec![q]);
        assert!(s.verify(&cookie, &rotated).is_none());
        // Signed out: refused.
        s.revoke(&back);
        assert!(s.verify(&cookie, &catalog).is_none());
    }

    #[test]
    fn an_expired_cookie_is_refused() {
        let s = Sessions::new(&ConsoleConfig { session_ttl: Duration::ZERO, ..ConsoleConfig::default() });
        let catalog = catalog_with(true);
        let p = catalog.iter().next().unwrap().clone();
        let (cookie, _) = s.issue(&p, &hash_token("t"));
        assert!(s.verify(&cookie, &catalog).is_none());
    }
}
