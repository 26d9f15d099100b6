//! Sealing SigV4 secrets at rest: AES-256-GCM under a key from the environment
//! (`TOLLGATE_SECRET_KEY`, 32 bytes as 64 hex characters or base64). The SigV4
//! secret must be recoverable to verify signatures, so it cannot be hashed like a
//! bearer key; a stolen database without the key reveals nothing.

use crate::error::{Error, Result};
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

pub const SECRET_KEY_ENV: &str = "TOLLGATE_SECRET_KEY";
const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct SealingKey(Aes256Gcm);

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

impl SealingKey {
    /// Parses 32 bytes given as 64 hex characters or as base64.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| STANDARD.decode(text).ok().filter(|b| b.len() == 32))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{SECRET_KEY_ENV} must be 32 bytes as 64 hex characters or base64 \
                     (e.g. `openssl rand -hex 32`)"
                ))
            })?;
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|e| Error::invalid(e.to_string()))?;
        Ok(Self(cipher))
    }

    /// The key from `TOLLGATE_SECRET_KEY`, if set.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// `base64(nonce || ciphertext+tag)`.
    pub fn seal(&self, plaintext: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .0
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| Error::Internal("sealing a secret failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<String> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| Error::Internal("sealed secret is not base64".into()))?;
        if bytes.len() <= NONCE_LEN {
            return Err(Error::Internal("sealed secret is truncated".into()));
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let pt = self.0.decrypt(Nonce::from_slice(nonce), ct).map_err(|_| {
            Error::Internal(format!(
                "cannot open a sealed SigV4 secret: {SECRET_KEY_ENV} differs from the key it was sealed with"
            ))
        })?;
        String::from_utf8(pt).map_err(|_| Error::Internal("sealed secret is not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_wrong_key() {
        let k = SealingKey::parse(&"11".repeat(32)).unwrap();
        let sealed = k.seal("wJalrXUtnFEMI/K7MDENG").unwrap();
        assert!(!sealed.contains("wJalr"));
        assert_eq!(k.open(&sealed).unwrap(), "wJalrXUtnFEMI/K7MDENG");
        // Fresh nonce each time.
        assert_ne!(k.seal("x").unwrap(), k.seal("x").unwrap());
        let other = SealingKey::parse(&STANDARD.encode([7u8; 32])).unwrap();
        assert!(other.open(&sealed).is_err());
    }

    #[test]
    fn bad_keys_are_refused_with_a_hint() {
        let e = SealingKey::parse("short").unwrap_err().to_string();
        assert!(e.contains("openssl rand -hex 32"), "{e}");
    }
}
