//! Dashboard sessions: the admin token is checked once at login, and the browser
//! keeps only an opaque random session id in an `HttpOnly`, `SameSite=Strict`
//! cookie, so the token never travels in a URL, a page or a later request.
//!
//! Sessions live in this process's memory: a restart logs everyone out, and
//! behind a load balancer each replica has its own (use sticky sessions).

use crate::keys;
use axum::http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "tollgate_ui_session";

/// How long a login lasts (absolute, not renewed by activity).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// At most this many live sessions; the oldest goes first. Only holders of the
/// admin token can create sessions, so this only bounds a runaway script.
const MAX_SESSIONS: usize = 1024;

/// Live sessions, keyed by the SHA-256 of their id: a lookup's timing then
/// depends on the hash, not on how much of a guessed id matched.
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Instant>>,
    ttl: Duration,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(SESSION_TTL)
    }
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            live: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session (32 random bytes, hex); returns its id.
    pub fn create(&self) -> String {
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b);
        let id = hex::encode(b);
        let now = Instant::now();
        let mut live = self.lock();
        live.retain(|_, expires| *expires > now);
        if live.len() >= MAX_SESSIONS {
            if let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) {
                live.remove(&oldest);
            }
        }
        live.insert(digest(&id), now + self.ttl);
        id
    }

    /// Whether `id` names a session that has not expired.
    pub fn is_valid(&self, id: &str) -> bool {
        let key = digest(id);
        let mut live = self.lock();
        match live.get(&key) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                live.remove(&key);
                false
            }
            None => false,
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&digest(id));
    }
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Whether `presented` is the admin token (constant time, as the admin API).
pub fn token_matches(presented: &str, admin_token: &str) -> bool {
    keys::constant_time_eq(presented.trim(), admin_token)
}

/// The session id of the request's `Cookie` header(s), if any.
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over TLS. The sidecar serves plain HTTP; a
/// TLS-terminating proxy in front says so with `X-Forwarded-Proto: https`, and
/// the cookie is then marked `Secure` (a false claim only makes the browser
/// withhold the cookie on plain HTTP, never expose it).
pub fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(id: &str, ttl: Duration, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_are_random_expire_and_end_at_logout() {
        let s = Sessions::new(Duration::from_secs(60));
        let a = s.create();
        let b = s.create();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(s.is_valid(&a) && s.is_valid(&b));
        assert!(!s.is_valid("0123"));
        s.remove(&a);
        assert!(!s.is_valid(&a) && s.is_valid(&b));

        let short = Sessions::new(Duration::ZERO);
        let c = short.create();
        assert!(!short.is_valid(&c), "an expired session is refused");
    }

    #[test]
    fn the_session_is_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        assert_eq!(session_id(&h), None);
        h.append(header::COOKIE, HeaderValue::from_static("other=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=b; tollgate_ui_session=abc123 ; c=d"),
        );
        assert_eq!(session_id(&h).as_deref(), Some("abc123"));
        let mut empty = HeaderMap::new();
        empty.insert(
            header::COOKIE,
            HeaderValue::from_static("tollgate_ui_session="),
        );
        assert_eq!(session_id(&empty), None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_behind_tls() {
        let c = set_cookie("abc", Duration::from_secs(10), false);
        assert_eq!(
            c,
            "tollgate_ui_session=abc; Path=/ui; Max-Age=10; HttpOnly; SameSite=Strict"
        );
        assert!(set_cookie("abc", Duration::from_secs(10), true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        let mut h = HeaderMap::new();
        assert!(!over_tls(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_tls(&h));
    }

    #[test]
    fn the_token_is_compared_whole() {
        assert!(token_matches("tga_secret", "tga_secret"));
        assert!(token_matches(" tga_secret\n", "tga_secret"));
        assert!(!token_matches("tga_secre", "tga_secret"));
        assert!(!token_matches("", "tga_secret"));
    }
}
