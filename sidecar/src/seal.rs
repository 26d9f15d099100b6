//! Sealing SigV4 secrets at rest: AES-256-GCM under keys from the environment,
//! and the keyring that lets those keys be rotated.
//!
//! The SigV4 secret must be recoverable to verify signatures, so it cannot be
//! hashed like a bearer key; a stolen database without the keys reveals nothing.
//!
//! # Keys
//! - `TOLLGATE_SECRET_KEY`: the current key. Every new seal uses it.
//! - `TOLLGATE_SECRET_KEY_PREVIOUS`: older keys, comma-separated, still used to
//!   open what they sealed, so the key can be rotated without losing issued
//!   credentials (`tollgate-sidecar rewrap` then re-seals everything under the
//!   current key; docs/operations.md, "Rotating TOLLGATE_SECRET_KEY").
//!
//! Each key is 32 bytes written as 64 hex characters or as base64. A key's
//! **id** is the first 8 hex characters of the SHA-256 of those 32 bytes: it
//! names the key in sealed values and messages without revealing it (32 bits of
//! a hash of a random 256-bit key say nothing about the key). For a hex key:
//! `echo -n "$TOLLGATE_SECRET_KEY" | xxd -r -p | sha256sum | cut -c1-8`.
//!
//! # Sealed format
//! `v1:<key id>:<base64(nonce || ciphertext+tag)>`, with the credential's access
//! key id as AES-GCM associated data: a sealed secret opens only in the record
//! it was sealed for, so one cannot be copied into another credential's row.
//!
//! Values written before key ids existed are `base64(nonce || ciphertext+tag)`
//! without associated data (base64 has no `:`, so the two never mix up). They
//! are opened by trying each configured key: AES-GCM authenticates, so a wrong
//! key fails cleanly instead of yielding garbage.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The current key (seals and opens).
pub const SECRET_KEY_ENV: &str = "TOLLGATE_SECRET_KEY";
/// Previous keys, comma-separated (open only).
pub const PREVIOUS_KEYS_ENV: &str = "TOLLGATE_SECRET_KEY_PREVIOUS";

const NONCE_LEN: usize = 12;
const VERSION: &str = "v1";
/// Associated-data prefix: says what the ciphertext is, before whose it is.
const AAD_PREFIX: &[u8] = b"tollgate-sigv4-secret:";

/// Why a key could not be loaded or a secret could not be sealed or opened.
/// Every message names what to change.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{var} must be 32 bytes as 64 hex characters or base64 (e.g. `openssl rand -hex 32`)")]
    BadKey { var: String },
    #[error(
        "{PREVIOUS_KEYS_ENV} is set but {SECRET_KEY_ENV} is not: set {SECRET_KEY_ENV} \
         to the key new SigV4 secrets are sealed with"
    )]
    PreviousWithoutCurrent,
    #[error(
        "two different keys among {SECRET_KEY_ENV} and {PREVIOUS_KEYS_ENV} have the same \
         key id {key_id}: generate another new key (`openssl rand -hex 32`)"
    )]
    KeyIdCollision { key_id: String },
    #[error(
        "SigV4 credential {access_key_id}: its secret is sealed with key id {key_id}, which \
         this sidecar does not have ({keys}); add that key to {PREVIOUS_KEYS_ENV} \
         (comma-separated) and restart"
    )]
    UnknownKey {
        access_key_id: String,
        key_id: String,
        keys: String,
    },
    #[error(
        "SigV4 credential {access_key_id}: its secret is sealed in the format without a key \
         id and opens with none of this sidecar's keys ({keys}); add the key it was sealed \
         with to {PREVIOUS_KEYS_ENV} (comma-separated) and restart"
    )]
    NoKeyOpens { access_key_id: String, keys: String },
    #[error(
        "SigV4 credential {access_key_id}: its sealed secret does not open with key id \
         {key_id} although this sidecar has that key: the stored value was altered or \
         copied from another credential; revoke the credential and issue a new one"
    )]
    Tampered {
        access_key_id: String,
        key_id: String,
    },
    #[error(
        "SigV4 credential {access_key_id}: its sealed secret is malformed ({reason}); \
         revoke the credential and issue a new one"
    )]
    Malformed {
        access_key_id: String,
        reason: &'static str,
    },
    #[error(
        "SigV4 credential {access_key_id}: its secret is sealed in format {version:?}, which \
         this sidecar cannot read; run a newer tollgate-sidecar"
    )]
    UnknownFormat {
        access_key_id: String,
        version: String,
    },
    #[error("sealing a SigV4 secret failed")]
    SealFailed,
}

/// One 32-byte key and its id.
#[derive(Clone)]
pub struct SealingKey {
    id: String,
    /// Full SHA-256 of the key: tells two keys apart when their short ids collide.
    fingerprint: [u8; 32],
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", self.id)
    }
}

impl SealingKey {
    /// Parses 32 bytes given as 64 hex characters or as base64 (errors name
    /// `TOLLGATE_SECRET_KEY`).
    pub fn parse(text: &str) -> Result<Self, SealError> {
        Self::parse_as(text, SECRET_KEY_ENV)
    }

    /// Like [`SealingKey::parse`]; errors name `var` (never the value).
    fn parse_as(text: &str, var: &str) -> Result<Self, SealError> {
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .filter(|b| b.len() == 32)
            .or_else(|| STANDARD.decode(text).ok().filter(|b| b.len() == 32))
            .ok_or_else(|| SealError::BadKey {
                var: var.to_string(),
            })?;
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| SealError::BadKey {
            var: var.to_string(),
        })?;
        let fingerprint: [u8; 32] = Sha256::digest(&bytes).into();
        Ok(Self {
            id: hex::encode(&fingerprint[..4]),
            fingerprint,
            cipher,
        })
    }

    /// The key's id: first 8 hex characters of the SHA-256 of its bytes.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn open_raw(&self, payload: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct) = payload.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
    }
}

/// A sealed value, taken apart.
enum Parsed<'a> {
    /// `v1:<key id>:<payload>`.
    V1 { key_id: &'a str, payload: &'a str },
    /// Plain base64 payload, sealed before key ids (no associated data).
    Legacy(&'a str),
}

fn parse_sealed<'a>(access_key_id: &str, sealed: &'a str) -> Result<Parsed<'a>, SealError> {
    let Some((version, rest)) = sealed.split_once(':') else {
        return Ok(Parsed::Legacy(sealed));
    };
    if version != VERSION {
        return Err(SealError::UnknownFormat {
            access_key_id: access_key_id.to_string(),
            version: version.to_string(),
        });
    }
    let (key_id, payload) = rest.split_once(':').ok_or_else(|| SealError::Malformed {
        access_key_id: access_key_id.to_string(),
        reason: "no key id",
    })?;
    Ok(Parsed::V1 { key_id, payload })
}

fn decode_payload(access_key_id: &str, payload: &str) -> Result<Vec<u8>, SealError> {
    let malformed = |reason| SealError::Malformed {
        access_key_id: access_key_id.to_string(),
        reason,
    };
    let bytes = STANDARD
        .decode(payload)
        .map_err(|_| malformed("not base64"))?;
    if bytes.len() <= NONCE_LEN {
        return Err(malformed("truncated"));
    }
    Ok(bytes)
}

fn aad(access_key_id: &str) -> Vec<u8> {
    [AAD_PREFIX, access_key_id.as_bytes()].concat()
}

/// The current key and the previous ones still accepted for opening.
#[derive(Debug, Clone)]
pub struct Keyring {
    current: SealingKey,
    previous: Vec<SealingKey>,
}

impl From<SealingKey> for Keyring {
    fn from(current: SealingKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }
}

impl Keyring {
    /// A keyring sealing with `current` and also opening with `previous`. A
    /// previous key equal to the current one (or listed twice) is dropped; two
    /// different keys with the same id are refused.
    pub fn new(current: SealingKey, previous: Vec<SealingKey>) -> Result<Self, SealError> {
        let mut ring = Self::from(current);
        for key in previous {
            let same_key = ring
                .keys()
                .find(|k| k.id == key.id)
                .map(|k| k.fingerprint == key.fingerprint);
            match same_key {
                Some(true) => {}
                Some(false) => return Err(SealError::KeyIdCollision { key_id: key.id }),
                None => ring.previous.push(key),
            }
        }
        Ok(ring)
    }

    /// The keys from `TOLLGATE_SECRET_KEY` and `TOLLGATE_SECRET_KEY_PREVIOUS`;
    /// `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>, SealError> {
        Self::from_values(
            std::env::var(SECRET_KEY_ENV).ok().as_deref(),
            std::env::var(PREVIOUS_KEYS_ENV).ok().as_deref(),
        )
    }

    /// [`Keyring::from_env`] on given values (blank counts as unset).
    pub fn from_values(
        current: Option<&str>,
        previous: Option<&str>,
    ) -> Result<Option<Self>, SealError> {
        let previous: Vec<&str> = previous
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let current = match current.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => SealingKey::parse_as(c, SECRET_KEY_ENV)?,
            None if previous.is_empty() => return Ok(None),
            None => return Err(SealError::PreviousWithoutCurrent),
        };
        let previous = previous
            .iter()
            .enumerate()
            .map(|(i, p)| {
                SealingKey::parse_as(p, &format!("{PREVIOUS_KEYS_ENV} (entry {})", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(current, previous).map(Some)
    }

    /// Id of the key new seals use.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Ids of the previous keys, in the order given.
    pub fn previous_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.id.as_str()).collect()
    }

    /// Which key ids this keyring has, for messages and logs.
    pub fn describe(&self) -> String {
        let previous = if self.previous.is_empty() {
            format!("{PREVIOUS_KEYS_ENV} is not set")
        } else {
            format!(
                "{PREVIOUS_KEYS_ENV} has key ids {}",
                self.previous_ids().join(", ")
            )
        };
        format!(
            "{SECRET_KEY_ENV} has key id {}, {previous}",
            self.current.id
        )
    }

    fn keys(&self) -> impl Iterator<Item = &SealingKey> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// Seals the secret of `access_key_id` under the current key:
    /// `v1:<key id>:<base64(nonce || ciphertext+tag)>`.
    pub fn seal(&self, access_key_id: &str, secret: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad(access_key_id),
                },
            )
            .map_err(|_| SealError::SealFailed)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!(
            "{VERSION}:{}:{}",
            self.current.id,
            STANDARD.encode(out)
        ))
    }

    /// Opens the secret of `access_key_id`, sealed by [`Keyring::seal`] under
    /// any key of the keyring, or in the format before key ids.
    pub fn open(&self, access_key_id: &str, sealed: &str) -> Result<String, SealError> {
        let plain = match parse_sealed(access_key_id, sealed)? {
            Parsed::V1 { key_id, payload } => {
                let key =
                    self.keys()
                        .find(|k| k.id == key_id)
                        .ok_or_else(|| SealError::UnknownKey {
                            access_key_id: access_key_id.to_string(),
                            key_id: key_id.to_string(),
                            keys: self.describe(),
                        })?;
                let payload = decode_payload(access_key_id, payload)?;
                key.open_raw(&payload, &aad(access_key_id))
                    .ok_or_else(|| SealError::Tampered {
                        access_key_id: access_key_id.to_string(),
                        key_id: key_id.to_string(),
                    })?
            }
            Parsed::Legacy(payload) => {
                let payload = decode_payload(access_key_id, payload)?;
                self.keys()
                    .find_map(|k| k.open_raw(&payload, &[]))
                    .ok_or_else(|| SealError::NoKeyOpens {
                        access_key_id: access_key_id.to_string(),
                        keys: self.describe(),
                    })?
            }
        };
        String::from_utf8(plain).map_err(|_| SealError::Malformed {
            access_key_id: access_key_id.to_string(),
            reason: "not UTF-8",
        })
    }

    /// Whether `sealed` names the current key (it may still fail to open).
    pub fn is_current(&self, sealed: &str) -> bool {
        matches!(
            parse_sealed("", sealed),
            Ok(Parsed::V1 { key_id, .. }) if key_id == self.current.id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AKID: &str = "TGAKAAAAAAAAAAAAAAAA";

    fn key(byte: u8) -> SealingKey {
        SealingKey::parse(&hex::encode([byte; 32])).unwrap()
    }

    /// What the sidecar wrote before key ids: `base64(nonce || ct)`, no AAD.
    fn legacy_seal(k: &SealingKey, plaintext: &str) -> String {
        let nonce = [9u8; NONCE_LEN];
        let ct = k
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap();
        STANDARD.encode([nonce.to_vec(), ct].concat())
    }

    #[test]
    fn seal_round_trip_and_wrong_key() {
        let ring = Keyring::from(key(0x11));
        let sealed = ring.seal(AKID, "wJalrXUtnFEMI/K7MDENG").unwrap();
        assert!(!sealed.contains("wJalr"));
        assert!(
            sealed.starts_with(&format!("v1:{}:", ring.current_id())),
            "{sealed}"
        );
        assert_eq!(ring.open(AKID, &sealed).unwrap(), "wJalrXUtnFEMI/K7MDENG");
        // Fresh nonce each time.
        assert_ne!(ring.seal(AKID, "x").unwrap(), ring.seal(AKID, "x").unwrap());
        let other = Keyring::from(SealingKey::parse(&STANDARD.encode([7u8; 32])).unwrap());
        let e = other.open(AKID, &sealed).unwrap_err().to_string();
        assert!(
            e.contains(ring.current_id()) && e.contains(PREVIOUS_KEYS_ENV),
            "{e}"
        );
    }

    #[test]
    fn key_id_is_a_short_sha256_of_the_key_bytes() {
        // sha256 of 32 zero bytes: 66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925
        let k = SealingKey::parse(&"00".repeat(32)).unwrap();
        assert_eq!(k.id(), "66687aad");
        // The same bytes as base64 are the same key.
        assert_eq!(
            SealingKey::parse(&STANDARD.encode([0u8; 32])).unwrap().id(),
            "66687aad"
        );
        assert!(
            !format!("{k:?}").contains("0000"),
            "Debug shows only the id"
        );
    }

    #[test]
    fn previous_keys_open_and_only_the_current_one_seals() {
        let (a, b) = (key(0xa), key(0xb));
        let old = Keyring::from(a.clone());
        let sealed_a = old.seal(AKID, "secret-a").unwrap();
        let legacy_a = legacy_seal(&a, "legacy-a");

        let rotated = Keyring::new(b.clone(), vec![a.clone()]).unwrap();
        assert_eq!(rotated.open(AKID, &sealed_a).unwrap(), "secret-a");
        assert_eq!(rotated.open(AKID, &legacy_a).unwrap(), "legacy-a");
        assert!(!rotated.is_current(&sealed_a) && !rotated.is_current(&legacy_a));
        let sealed_b = rotated.seal(AKID, "secret-a").unwrap();
        assert!(rotated.is_current(&sealed_b));
        assert!(sealed_b.starts_with(&format!("v1:{}:", b.id())));

        // Only the new key left: the old values name what is missing.
        let only_b = Keyring::from(b.clone());
        assert_eq!(only_b.open(AKID, &sealed_b).unwrap(), "secret-a");
        let e = only_b.open(AKID, &sealed_a).unwrap_err();
        assert!(matches!(e, SealError::UnknownKey { .. }), "{e:?}");
        let msg = e.to_string();
        for part in [AKID, a.id(), b.id(), SECRET_KEY_ENV, PREVIOUS_KEYS_ENV] {
            assert!(msg.contains(part), "{part} missing from: {msg}");
        }
        let e = only_b.open(AKID, &legacy_a).unwrap_err();
        assert!(matches!(e, SealError::NoKeyOpens { .. }), "{e:?}");
        assert!(e.to_string().contains(PREVIOUS_KEYS_ENV), "{e}");
    }

    #[test]
    fn legacy_values_open_with_the_current_key_too() {
        let a = key(0xa);
        let ring = Keyring::new(a.clone(), vec![key(0xc)]).unwrap();
        assert_eq!(ring.open(AKID, &legacy_seal(&a, "old")).unwrap(), "old");
        // Legacy values carry no access key id: any record opens them.
        assert_eq!(ring.open("OTHER", &legacy_seal(&a, "old")).unwrap(), "old");
    }

    #[test]
    fn a_sealed_secret_is_bound_to_its_access_key_id() {
        let ring = Keyring::from(key(0x11));
        let sealed = ring.seal(AKID, "s").unwrap();
        let e = ring.open("TGAKBBBBBBBBBBBBBBBB", &sealed).unwrap_err();
        assert!(matches!(e, SealError::Tampered { .. }), "{e:?}");
        // A flipped byte of the ciphertext: same answer.
        let (head, payload) = sealed.rsplit_once(':').unwrap();
        let mut bytes = STANDARD.decode(payload).unwrap();
        bytes[NONCE_LEN] ^= 1;
        let altered = format!("{head}:{}", STANDARD.encode(bytes));
        assert!(matches!(
            ring.open(AKID, &altered),
            Err(SealError::Tampered { .. })
        ));
    }

    #[test]
    fn malformed_and_unknown_formats_are_named() {
        let ring = Keyring::from(key(0x11));
        let id = ring.current_id();
        for (sealed, want) in [
            ("v1:nokeyid".to_string(), "no key id"),
            (format!("v1:{id}:***"), "not base64"),
            (format!("v1:{id}:AAAA"), "truncated"),
            ("AAAA".to_string(), "truncated"),
            ("v9:abcd1234:AAAA".to_string(), "\"v9\""),
            // Well-formed, under a key id this keyring does not have.
            ("v1:abcd1234:AAAA".to_string(), "key id abcd1234"),
        ] {
            let e = ring.open(AKID, &sealed).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(AKID), "{sealed}: {e}");
        }
    }

    #[test]
    fn keyring_from_values() {
        let hex_a = hex::encode([0xa; 32]);
        let b64_b = STANDARD.encode([0xb; 32]);
        assert!(Keyring::from_values(None, None).unwrap().is_none());
        assert!(Keyring::from_values(Some("  "), Some(""))
            .unwrap()
            .is_none());
        let ring = Keyring::from_values(Some(&b64_b), Some(&format!(" {hex_a} , ,{b64_b},")))
            .unwrap()
            .unwrap();
        assert_eq!(ring.current_id(), key(0xb).id());
        // The current key listed again as previous is dropped.
        assert_eq!(ring.previous_ids(), vec![key(0xa).id()]);
        assert!(
            ring.describe().contains(key(0xa).id()),
            "{}",
            ring.describe()
        );

        let e = Keyring::from_values(None, Some(&hex_a)).unwrap_err();
        assert!(matches!(e, SealError::PreviousWithoutCurrent), "{e:?}");
        let e = Keyring::from_values(Some(&hex_a), Some(&format!("{b64_b},short")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TOLLGATE_SECRET_KEY_PREVIOUS (entry 2)") && !e.contains("short"),
            "{e}"
        );
    }

    #[test]
    fn bad_keys_are_refused_with_a_hint() {
        let e = SealingKey::parse("short").unwrap_err().to_string();
        assert!(e.contains("openssl rand -hex 32"), "{e}");
    }
}
