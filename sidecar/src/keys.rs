//! Bearer keys: `tg_<base64url of 32 random bytes>`, stored only as SHA-256 hashes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new tenant key from the thread-local CSPRNG (ChaCha, seeded by the OS).
pub fn generate_key() -> String {
    format!("tg_{}", random_b64(32))
}

/// A new admin token (same shape, other prefix).
pub fn generate_admin_token() -> String {
    format!("tga_{}", random_b64(32))
}

/// Public identifier of a key (safe to log and to use in URLs).
pub fn generate_key_id() -> String {
    let mut b = [0u8; 8];
    rand::rng().fill_bytes(&mut b);
    format!("key_{}", hex::encode(b))
}

fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rng().fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A SigV4 access key id: `TGAK` + 16 characters of base32, 20 in all like AWS's
/// (SDKs and the AWS CLI accept any such string).
pub fn generate_access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    let tail: String = b
        .iter()
        .map(|x| ALPHABET[(*x & 31) as usize] as char)
        .collect();
    format!("TGAK{tail}")
}

/// A SigV4 secret access key: 40 characters, like AWS's.
pub fn generate_secret_access_key() -> String {
    random_b64(30)
}

/// Hex SHA-256 of a key: the only form a key is stored in.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (ha, hb) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Last-use times of keys, gathered in memory and written to the store in one
/// batch per sweep: a request costs no store write for it.
#[derive(Debug, Default)]
pub struct LastUsed(std::sync::Mutex<std::collections::HashMap<String, i64>>);

impl LastUsed {
    /// Notes that the key with this hash authenticated a request at `at_ms`.
    pub fn note(&self, key_hash: &str, at_ms: i64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let t = m.entry(key_hash.to_string()).or_insert(at_ms);
        *t = (*t).max(at_ms);
    }

    /// What was noted since the last call, sorted by hash.
    pub fn take(&self) -> Vec<(String, i64)> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = m.drain().collect();
        v.sort();
        v
    }

    /// Puts back what a failed flush took, keeping anything newer.
    pub fn restore(&self, used: Vec<(String, i64)>) {
        for (h, at) in used {
            self.note(&h, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shape() {
        let k = generate_key();
        assert!(k.starts_with("tg_"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&k[3..]).unwrap().len(), 32);
        assert_ne!(k, generate_key());
        assert!(generate_key_id().starts_with("key_"));
    }

    #[test]
    fn hashing_and_comparison() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq("same", "same"));
        assert!(!constant_time_eq("same", "diff"));
    }

    #[test]
    fn last_used_keeps_the_latest_and_drains() {
        let l = LastUsed::default();
        l.note("b", 5);
        l.note("a", 7);
        l.note("a", 3);
        assert_eq!(l.take(), vec![("a".into(), 7), ("b".into(), 5)]);
        assert!(l.take().is_empty());
        l.note("a", 9);
        l.restore(vec![("a".into(), 8), ("c".into(), 1)]);
        assert_eq!(l.take(), vec![("a".into(), 9), ("c".into(), 1)]);
    }
}
