//! `tollgate-sidecar rewrap`: re-seals every stored SigV4 secret under the
//! current `TOLLGATE_SECRET_KEY`, so that the keys in
//! `TOLLGATE_SECRET_KEY_PREVIOUS` can be dropped after a rotation
//! (docs/operations.md, "Rotating TOLLGATE_SECRET_KEY").
//!
//! It works on the store directly, with `serve`'s store flags, not through a
//! running sidecar: the admin API never hands out sealed values, and a
//! rotation is an operator's job on the ledger as a whole. Sidecars may keep
//! running meanwhile: each secret is written back with a conditional update
//! (only if the stored value is still the one read), so a concurrent rewrap is
//! never overwritten and a revocation made in between is kept.
//!
//! Idempotent: a value already under the current key is opened (which checks
//! it) but not rewritten. Values in the format before key ids are re-sealed in
//! the current format, which also binds them to their access key id.

use crate::config::RewrapArgs;
use crate::error::{Error, Result};
use crate::seal::{Keyring, PREVIOUS_KEYS_ENV, SECRET_KEY_ENV};
use crate::store::Store;
use std::time::Instant;

/// What a rewrap did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub current_key_id: String,
    pub dry_run: bool,
    /// Re-sealed under the current key (dry run: would be).
    pub rewrapped: usize,
    /// Already sealed under the current key; left as is.
    pub already_current: usize,
    /// Could not be opened or written back; see `problems`.
    pub failed: usize,
    /// Revoked credentials no configured key opens: never verified again, so
    /// left as is rather than failing the run.
    pub skipped_revoked: usize,
    /// One line per failed or skipped credential, naming it and why.
    pub problems: Vec<String>,
}

impl Report {
    /// One line for the operator.
    pub fn summary(&self) -> String {
        format!(
            "{}rewrapped {}, already current {}, failed {}, skipped {} (revoked, no key opens them); \
             current key id {}",
            if self.dry_run { "dry run: would have " } else { "" },
            self.rewrapped,
            self.already_current,
            self.failed,
            self.skipped_revoked,
            self.current_key_id
        )
    }
}

/// The run finished but some secrets were not re-sealed.
#[derive(Debug, thiserror::Error)]
#[error(
    "{failed} SigV4 secret(s) could not be re-sealed (reasons above); fix them and run \
     `tollgate-sidecar rewrap` again (it skips what is already current)"
)]
pub struct Incomplete {
    pub failed: usize,
}

/// Re-seals every SigV4 secret in `store` under `keys`' current key.
/// Per-credential problems are counted in the report; only a failure to list
/// the credentials is an error.
pub async fn rewrap(store: &dyn Store, keys: &Keyring, dry_run: bool) -> Result<Report> {
    let mut report = Report {
        current_key_id: keys.current_id().to_string(),
        dry_run,
        ..Report::default()
    };
    for cred in store.list_all_sigv4_credentials().await? {
        let akid = &cred.access_key_id;
        let secret = match keys.open(akid, &cred.sealed_secret) {
            Ok(secret) => secret,
            Err(e) if cred.revoked => {
                report.skipped_revoked += 1;
                report.problems.push(format!("skipped (revoked): {e}"));
                continue;
            }
            Err(e) => {
                report.failed += 1;
                report.problems.push(format!("failed: {e}"));
                continue;
            }
        };
        if keys.is_current(&cred.sealed_secret) {
            report.already_current += 1;
            continue;
        }
        if dry_run {
            report.rewrapped += 1;
            continue;
        }
        let resealed = keys.seal(akid, &secret)?;
        match store
            .replace_sigv4_sealed_secret(akid, &cred.sealed_secret, &resealed)
            .await
        {
            Ok(true) => report.rewrapped += 1,
            Ok(false) => {
                report.failed += 1;
                report.problems.push(format!(
                    "failed: SigV4 credential {akid}: its sealed secret changed while \
                     rewrapping (another rewrap?); run rewrap again"
                ));
            }
            Err(e) => {
                report.failed += 1;
                report
                    .problems
                    .push(format!("failed: SigV4 credential {akid}: {e}"));
            }
        }
    }
    Ok(report)
}

/// `tollgate-sidecar rewrap [--dry-run]` with `serve`'s store flags and keys.
pub async fn command(args: RewrapArgs) -> Result<()> {
    let keys = Keyring::from_env()?.ok_or_else(|| {
        Error::invalid(format!(
            "rewrap needs {SECRET_KEY_ENV} (the key to seal with) and, in {PREVIOUS_KEYS_ENV}, \
             the keys the stored secrets were sealed with"
        ))
    })?;
    // Opening SQLite creates a missing file: a mistyped --db would report an
    // empty ledger as done.
    if args.ledger.store == crate::config::StoreKind::Sqlite && !args.ledger.db.exists() {
        return Err(Error::invalid(format!(
            "no ledger at {}: pass the --db (TOLLGATE_DB) the sidecar serves",
            args.ledger.db.display()
        )));
    }
    let store = crate::server::open_ledger(&args.ledger).await?;
    let started = Instant::now();
    let result = rewrap(&*store, &keys, args.dry_run).await;
    if !args.dry_run {
        crate::audit::log_rewrap(keys.current_id(), &result, started.elapsed());
    }
    let report = result?;
    for p in &report.problems {
        eprintln!("{p}");
    }
    println!("{}", report.summary());
    if report.failed > 0 {
        return Err(Incomplete {
            failed: report.failed,
        }
        .into());
    }
    Ok(())
}
