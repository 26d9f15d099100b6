//! Who may call the data plane (`/v1/reserve`, `/v1/commit`, `/v1/release`,
//! `/v1/leases/*`), and which client credential types the sidecar honours.
//!
//! - **Filter token.** Every data-plane call carries `x-tollgate-filter-token`;
//!   a call without one of the accepted tokens is refused 401 before its body is
//!   read, so it has no effect. Tokens come from `--filter-token-file` (one per
//!   line, re-read when the file changes, so a token can be rotated without
//!   downtime) and/or `TOLLGATE_FILTER_TOKEN`. Only their SHA-256 digests are
//!   kept, and a presented token is compared with every accepted one in constant
//!   time. The admin token is never a filter token and the other way round.
//! - **Accepted credential types.** `trusted_header` and `jwt` credentials name
//!   a tenant without proof the sidecar can check; they are honoured only when
//!   the sidecar was started with them in `--accept-credentials`. Otherwise a
//!   reserve is denied 403 `AccessDeniedException`, and a commit's `unreserved`
//!   request is not charged (`unknown_request`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tollgate_wire::api::{
    ApiError, Credential, Denial, ReserveRequest, COMMIT_PATH, LEASE_RENEW_PATH, RELEASE_PATH,
    RESERVE_PATH, SELF_PATH,
};

/// The header the filter sends its token in.
pub const FILTER_TOKEN_HEADER: &str = "x-tollgate-filter-token";
/// Environment variable holding one filter token (sidecar and Wasm VM alike).
pub const FILTER_TOKEN_ENV: &str = "TOLLGATE_FILTER_TOKEN";
/// Shortest token accepted (a generated token is 48 hex characters).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 4096;
/// How often the token file is checked for changes while requests arrive.
pub const FILE_POLL: Duration = Duration::from_secs(1);
/// After a refused token, the file is checked again if it was not checked this
/// recently (so a freshly added token works at once, and a flood of bad tokens
/// costs at most ten `stat` calls a second).
const FILE_RECHECK_ON_MISS: Duration = Duration::from_millis(100);

/// Routes of the data plane: the calls only the filter makes. Everything under
/// `/v1/leases/` is included, so a lease route added later is covered.
pub fn is_data_plane_path(path: &str) -> bool {
    matches!(
        path,
        RESERVE_PATH | COMMIT_PATH | RELEASE_PATH | LEASE_RENEW_PATH | SELF_PATH
    ) || path == "/v1/leases"
        || path.starts_with("/v1/leases/")
}

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// True when `d` equals one of `set`; every entry is compared, in constant time.
fn contains_ct(set: &[Digest32], d: &Digest32) -> bool {
    let mut found = 0u8;
    for s in set {
        let diff = s
            .iter()
            .zip(d.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        found |= u8::from(diff == 0);
    }
    found != 0
}

/// Checks one token's shape (not its value).
pub fn validate_token(token: &str) -> Result<(), String> {
    if token.len() < MIN_TOKEN_LEN {
        return Err(format!(
            "a filter token must be at least {MIN_TOKEN_LEN} characters"
        ));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "a filter token must be at most {MAX_TOKEN_LEN} characters"
        ));
    }
    if !token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("a filter token must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// Parses a token file: one token per line; blank lines and lines starting
/// with `#` are ignored; surrounding whitespace is trimmed. Errors name the
/// line, never its content.
pub fn parse_token_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        validate_token(t).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(t.to_string());
    }
    Ok(out)
}

/// What identifies a version of the token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    ino: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        ino,
    })
}

struct TokenFile {
    path: PathBuf,
    /// Digests read from the file last time it parsed.
    digests: RwLock<Arc<Vec<Digest32>>>,
    /// (last check, stamp of the version applied or refused last).
    checked: Mutex<(Instant, Option<Stamp>)>,
}

/// The filter tokens this sidecar accepts.
pub struct FilterTokens {
    /// From `TOLLGATE_FILTER_TOKEN`: fixed for the process's life.
    fixed: Vec<Digest32>,
    file: Option<TokenFile>,
    /// The admin token's digest: never accepted on the data plane, and a token
    /// file that contains it is refused.
    forbidden: Option<Digest32>,
}

impl FilterTokens {
    /// Tokens from a file and/or one fixed token. Fails when none is valid, or
    /// when one equals `admin_token`.
    pub fn new(
        file: Option<&Path>,
        fixed: Option<&str>,
        admin_token: Option<&str>,
    ) -> Result<Self, String> {
        let forbidden = admin_token.map(digest);
        let mut fixed_digests = Vec::new();
        if let Some(t) = fixed {
            let t = t.trim();
            validate_token(t).map_err(|e| format!("{FILTER_TOKEN_ENV}: {e}"))?;
            fixed_digests.push(digest(t));
        }
        let file = match file {
            None => None,
            Some(path) => {
                let st = stamp(path)
                    .map_err(|e| format!("filter token file {}: {e}", path.display()))?;
                let digests = read_digests(path)?;
                Some(TokenFile {
                    path: path.to_path_buf(),
                    digests: RwLock::new(Arc::new(digests)),
                    checked: Mutex::new((Instant::now(), Some(st))),
                })
            }
        };
        let me = Self {
            fixed: fixed_digests,
            file,
            forbidden,
        };
        if me.count() == 0 {
            return Err("no filter token configured: the token file has no token".into());
        }
        if let Some(f) = &me.forbidden {
            if contains_ct(&me.current(), f) {
                return Err(
                    "a filter token equals TOLLGATE_ADMIN_TOKEN: they must differ (the filter token must never grant admin)"
                        .into(),
                );
            }
        }
        Ok(me)
    }

    fn current(&self) -> Vec<Digest32> {
        let mut all = self.fixed.clone();
        if let Some(f) = &self.file {
            if let Ok(d) = f.digests.read() {
                all.extend(d.iter().copied());
            }
        }
        all
    }

    /// How many tokens are accepted now.
    pub fn count(&self) -> usize {
        self.fixed.len()
            + self
                .file
                .as_ref()
                .and_then(|f| f.digests.read().ok().map(|d| d.len()))
                .unwrap_or(0)
    }

    /// Whether `presented` is an accepted token.
    pub fn verify(&self, presented: &str) -> bool {
        self.reload_if_due(FILE_POLL);
        if self.matches(presented) {
            return true;
        }
        // A token just added to the file: look again before refusing.
        if self.reload_if_due(FILE_RECHECK_ON_MISS) {
            return self.matches(presented);
        }
        false
    }

    fn matches(&self, presented: &str) -> bool {
        let d = digest(presented.trim());
        if let Some(f) = &self.forbidden {
            if contains_ct(std::slice::from_ref(f), &d) {
                return false;
            }
        }
        let in_fixed = contains_ct(&self.fixed, &d);
        let in_file = match &self.file {
            Some(f) => f
                .digests
                .read()
                .map(|set| contains_ct(&set, &d))
                .unwrap_or(false),
            None => false,
        };
        in_fixed | in_file
    }

    /// Re-reads the token file if it was not checked within `min_interval` and
    /// changed since. True when a new token set was applied.
    pub fn reload_if_due(&self, min_interval: Duration) -> bool {
        let Some(f) = &self.file else {
            return false;
        };
        // Another request is checking: use the current set.
        let Ok(mut checked) = f.checked.try_lock() else {
            return false;
        };
        let now = Instant::now();
        if now.duration_since(checked.0) < min_interval {
            return false;
        }
        checked.0 = now;
        let st = match stamp(&f.path) {
            Ok(s) => s,
            Err(e) => {
                if checked.1.is_some() {
                    tracing::error!(file = %f.path.display(), error = %e,
                        "cannot read the filter token file; keeping the tokens read before");
                    checked.1 = None;
                }
                return false;
            }
        };
        if checked.1 == Some(st) {
            return false;
        }
        checked.1 = Some(st);
        let digests = match read_digests(&f.path) {
            Ok(d) if d.is_empty() => {
                tracing::warn!(file = %f.path.display(),
                    "the filter token file has no token; keeping the tokens read before");
                return false;
            }
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "keeping the filter tokens read before");
                return false;
            }
        };
        if let Some(forbidden) = &self.forbidden {
            if contains_ct(&digests, forbidden) {
                tracing::error!(file = %f.path.display(),
                    "the filter token file contains TOLLGATE_ADMIN_TOKEN; keeping the tokens read before");
                return false;
            }
        }
        let n = digests.len();
        if let Ok(mut w) = f.digests.write() {
            *w = Arc::new(digests);
        }
        tracing::info!(file = %f.path.display(), tokens = n, "filter tokens reloaded");
        true
    }
}

fn read_digests(path: &Path) -> Result<Vec<Digest32>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("filter token file {}: {e}", path.display()))?;
    let tokens = parse_token_file(&text)
        .map_err(|e| format!("filter token file {}: {e}", path.display()))?;
    Ok(tokens.iter().map(|t| digest(t)).collect())
}

/// A client credential type, as named in `--accept-credentials`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum CredentialKind {
    /// Tollgate bearer keys (`Authorization: Bearer tg_…`).
    Bearer,
    /// SigV4 signatures made with credentials the sidecar issued.
    Sigv4,
    /// A tenant claim verified by Envoy's `jwt_authn` filter.
    Jwt,
    /// `x-tenant-id` from a trusted hop in front of the gateway.
    #[value(name = "trusted_header", alias = "trusted-header")]
    TrustedHeader,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Sigv4 => "sigv4",
            Self::Jwt => "jwt",
            Self::TrustedHeader => "trusted_header",
        }
    }

    /// The type of a credential; `None` for [`Credential::None`] (always
    /// passed on: the ledger answers it 401 `UnrecognizedClientException`).
    pub fn of(c: &Credential) -> Option<Self> {
        match c {
            Credential::Bearer { .. } => Some(Self::Bearer),
            Credential::Sigv4(_) => Some(Self::Sigv4),
            Credential::Jwt { .. } => Some(Self::Jwt),
            Credential::TrustedHeader { .. } => Some(Self::TrustedHeader),
            Credential::None => None,
        }
    }
}

/// The credential types this sidecar honours (`--accept-credentials`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedCredentials(Vec<CredentialKind>);

impl Default for AcceptedCredentials {
    /// `bearer,sigv4`: the credentials the sidecar itself verifies.
    fn default() -> Self {
        Self(vec![CredentialKind::Bearer, CredentialKind::Sigv4])
    }
}

impl AcceptedCredentials {
    pub fn new(kinds: &[CredentialKind]) -> Self {
        let mut v: Vec<CredentialKind> = Vec::new();
        for k in kinds {
            if !v.contains(k) {
                v.push(*k);
            }
        }
        Self(v)
    }

    /// Every type, for tests and fully trusted deployments.
    pub fn all() -> Self {
        Self::new(&[
            CredentialKind::Bearer,
            CredentialKind::Sigv4,
            CredentialKind::Jwt,
            CredentialKind::TrustedHeader,
        ])
    }

    pub fn allows(&self, kind: CredentialKind) -> bool {
        self.0.contains(&kind)
    }

    /// `bearer,sigv4`…
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The type of `req`'s credential when this sidecar does not honour it.
    pub fn refused(&self, req: &ReserveRequest) -> Option<CredentialKind> {
        self.refused_credential(&req.credential)
    }

    /// The credential's type, when this sidecar does not accept it.
    pub fn refused_credential(&self, credential: &Credential) -> Option<CredentialKind> {
        CredentialKind::of(credential).filter(|k| !self.allows(*k))
    }
}

/// The reserve answer for a credential type that is not enabled.
pub fn not_enabled(kind: CredentialKind) -> Denial {
    Denial {
        status: 403,
        error_type: "AccessDeniedException".into(),
        message: format!(
            "credential type {} is not enabled on this sidecar",
            kind.as_str()
        ),
        retry_after_secs: None,
        rate_limits: Vec::new(),
    }
}

/// Who may call the data plane, and with what.
pub struct DataPlaneAuth {
    /// `None`: `--insecure-open-data-plane`, anyone who reaches the port.
    pub tokens: Option<FilterTokens>,
    pub accepted: AcceptedCredentials,
}

impl DataPlaneAuth {
    /// Tokens required, the given credential types honoured.
    pub fn new(tokens: FilterTokens, accepted: AcceptedCredentials) -> Self {
        Self {
            tokens: Some(tokens),
            accepted,
        }
    }

    /// No token required (`--insecure-open-data-plane`).
    pub fn open(accepted: AcceptedCredentials) -> Self {
        Self {
            tokens: None,
            accepted,
        }
    }

    /// Ok when the request may use the data plane, else the refusal's message.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        match headers.get(FILTER_TOKEN_HEADER) {
            None => Err("missing filter token: the data plane is for the Tollgate filter, which sends x-tollgate-filter-token"),
            Some(v) => match v.to_str() {
                Ok(t) if tokens.verify(t) => Ok(()),
                _ => Err("invalid filter token"),
            },
        }
    }
}

/// Middleware over the whole router: a data-plane call without an accepted
/// filter token is answered 401 `{"message"}` before its body is read.
pub async fn require_filter_token(
    State(auth): State<Arc<DataPlaneAuth>>,
    req: Request,
    next: Next,
) -> Response {
    if !is_data_plane_path(req.uri().path()) {
        return next.run(req).await;
    }
    match auth.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(message) => {
            tracing::debug!(path = %req.uri().path(), message, "data-plane call refused");
            (
                StatusCode::UNAUTHORIZED,
                Json(ApiError {
                    message: message.to_string(),
                }),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "token-a-0123456789abcdef";
    const B: &str = "token-b-0123456789abcdef";

    #[test]
    fn paths() {
        for p in [
            "/v1/reserve",
            "/v1/commit",
            "/v1/release",
            "/v1/leases/renew",
            "/v1/leases/anything-later",
            "/v1/leases",
        ] {
            assert!(is_data_plane_path(p), "{p}");
        }
        for p in ["/healthz", "/metrics", "/v1/tenants/x", "/v1/leasesx", "/"] {
            assert!(!is_data_plane_path(p), "{p}");
        }
    }

    #[test]
    fn token_file_format() {
        let t = parse_token_file(&format!("# new\n{A}\n\n  {B}  \n#{A}x\n")).unwrap();
        assert_eq!(t, vec![A.to_string(), B.to_string()]);
        let e = parse_token_file("short\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("short"), "{e}");
        assert!(parse_token_file("has a space inside it!\n").is_err());
        assert!(parse_token_file("").unwrap().is_empty());
    }

    #[test]
    fn fixed_token() {
        let t = FilterTokens::new(None, Some(A), None).unwrap();
        assert!(t.verify(A));
        assert!(!t.verify(B));
        assert!(!t.verify(""));
        assert!(!t.verify(&A[..A.len() - 1]));
        assert!(FilterTokens::new(None, Some("short"), None).is_err());
    }

    #[test]
    fn admin_token_is_never_a_filter_token() {
        assert!(FilterTokens::new(None, Some(A), Some(A)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let t = FilterTokens::new(Some(&path), None, Some(B)).unwrap();
        assert!(!t.verify(B));
        // A file that gains the admin token is not applied.
        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        t.reload_if_due(Duration::ZERO);
        assert!(!t.verify(B));
        assert!(t.verify(A));
    }

    #[test]
    fn file_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("{A}\n")).unwrap();
        let t = FilterTokens::new(Some(&path), None, None).unwrap();
        assert!(t.verify(A) && !t.verify(B));
        std::fs::write(&path, format!("{A}\n{B}\n")).unwrap();
        assert!(t.reload_if_due(Duration::ZERO));
        assert!(t.verify(A) && t.verify(B));
        std::fs::write(&path, format!("# rotated\n{B}\n")).unwrap();
        assert!(t.reload_if_due(Duration::ZERO));
        assert!(!t.verify(A) && t.verify(B));
        // Broken, empty or missing files keep the last good set.
        std::fs::write(&path, "short\n").unwrap();
        assert!(!t.reload_if_due(Duration::ZERO));
        assert!(t.verify(B));
        std::fs::write(&path, "\n").unwrap();
        assert!(!t.reload_if_due(Duration::ZERO));
        assert!(t.verify(B));
        std::fs::remove_file(&path).unwrap();
        assert!(!t.reload_if_due(Duration::ZERO));
        assert!(t.verify(B));
    }

    #[test]
    fn empty_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(FilterTokens::new(Some(&path), None, None).is_err());
        assert!(FilterTokens::new(Some(&dir.path().join("missing")), None, None).is_err());
        // The fixed token alone is enough.
        assert!(FilterTokens::new(Some(&path), Some(A), None).is_ok());
    }

    #[test]
    fn credential_kinds() {
        let d = AcceptedCredentials::default();
        assert_eq!(d.describe(), "bearer,sigv4");
        assert!(d.allows(CredentialKind::Bearer) && !d.allows(CredentialKind::Jwt));
        assert_eq!(
            AcceptedCredentials::all().describe(),
            "bearer,sigv4,jwt,trusted_header"
        );
        let deny = not_enabled(CredentialKind::TrustedHeader);
        assert_eq!(
            (deny.status, deny.error_type.as_str()),
            (403, "AccessDeniedException")
        );
        assert_eq!(
            deny.message,
            "credential type trusted_header is not enabled on this sidecar"
        );
    }
}
