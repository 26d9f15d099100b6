//! Embedded store: SQLite (WAL, `synchronous=FULL` unless `--sqlite-synchronous normal`) on local disk.
//!
//! **Writes: one writer thread, group commit.** With `synchronous=FULL` every
//! `COMMIT` is an fsync, and one transaction per reserve or commit caps the
//! ledger at the disk's fsync rate (~900 reserve+commit pairs/s on the bench
//! VM). So one thread owns the only writing connection: callers send it jobs
//! over a channel; it takes the first, drains what else is queued (up to
//! [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction, each job in
//! its own `SAVEPOINT` (a job's error or early return rolls back its changes
//! only), then one `COMMIT` — one fsync for the whole batch — and only then
//! answers every caller. An answered write is therefore on disk (kill -9 loses
//! nothing acknowledged); if the `COMMIT` fails, every job of the batch gets
//! the error. Every balance change stays atomic (its savepoint inside one
//! transaction), and `BEGIN IMMEDIATE` keeps the check-and-move of a hold
//! atomic even across processes sharing the file.
//!
//! **Reads** go to a small pool of read-only connections: WAL lets them read the
//! last committed state while the writer works, so they never queue behind it.
//!
//! Money is stored as decimal text and only ever added with `rust_decimal`.

use super::*;
use crate::error::Error;
use crate::ledger::AlertKind;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

/// Schema version 1: the original layout. `IF NOT EXISTS` throughout, so a ledger
/// created before versioning (`user_version` 0, same tables) adopts it unchanged.
const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS tenants (
    tenant_id TEXT PRIMARY KEY,
    budget_usd TEXT NOT NULL,
    alert_threshold TEXT NOT NULL,
    reset_cycle TEXT NOT NULL,
    active INTEGER NOT NULL,
    allowed_models TEXT NOT NULL,
    default_model TEXT,
    max_tokens_cap INTEGER,
    rate_limit_rpm INTEGER
);
CREATE TABLE IF NOT EXISTS pricing (
    model_id TEXT PRIMARY KEY,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    cache_read TEXT,
    cache_write TEXT
);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT PRIMARY KEY,
    model_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS profiles (
    tenant_id TEXT NOT NULL,
    application_id TEXT NOT NULL DEFAULT '',
    model_id TEXT NOT NULL,
    arn TEXT NOT NULL,
    PRIMARY KEY (tenant_id, application_id, model_id)
);
CREATE INDEX IF NOT EXISTS profiles_by_arn ON profiles (tenant_id, arn);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    key_hash TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    application_id TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE IF NOT EXISTS sigv4_credentials (
    access_key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    application_id TEXT,
    sealed_secret TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
-- TenantBudgets: one row per (tenant, period, scope); scope 'ALL' is the tenant
-- total (budget and reserved live there), other scopes are model IDs.
CREATE TABLE IF NOT EXISTS budgets (
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    scope TEXT NOT NULL,
    budget_usd TEXT NOT NULL DEFAULT '0',
    spent_usd TEXT NOT NULL DEFAULT '0',
    reserved_usd TEXT NOT NULL DEFAULT '0',
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_input_tokens INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, period, scope)
);
CREATE TABLE IF NOT EXISTS holds (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    model_id TEXT NOT NULL,
    target_model TEXT NOT NULL,
    application_id TEXT,
    cost_center TEXT,
    environment TEXT,
    user_id TEXT,
    max_output_tokens INTEGER NOT NULL,
    hold_usd TEXT NOT NULL,
    budget_remaining_usd TEXT NOT NULL,
    rate_input TEXT NOT NULL,
    rate_output TEXT NOT NULL,
    rate_cache_read TEXT NOT NULL,
    rate_cache_write TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL,
    settled_at INTEGER
);
CREATE INDEX IF NOT EXISTS holds_open_by_expiry ON holds (state, expires_at);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    application_id TEXT,
    model_id TEXT NOT NULL,
    cost_center TEXT,
    environment TEXT,
    user_id TEXT,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_input_tokens INTEGER NOT NULL,
    cache_write_input_tokens INTEGER NOT NULL,
    cost_usd TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_by_time ON usage (at);
CREATE TABLE IF NOT EXISTS alerts (
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    kind TEXT NOT NULL,
    fired_at INTEGER NOT NULL,
    spent_usd TEXT NOT NULL,
    budget_usd TEXT NOT NULL,
    request_id TEXT,
    cost_usd TEXT,
    PRIMARY KEY (tenant_id, period, kind)
);
"#;

/// Version 2: per-tenant tokens-per-minute limit.
const SCHEMA_V2: &str = "ALTER TABLE tenants ADD COLUMN rate_limit_tpm INTEGER;";

/// Version 3: per-model budgets. `tenants.model_budgets` is a JSON object of
/// decimal strings; a hold admitted under a model budget records it
/// (`holds.model_budget_usd`); a model row whose `budget_usd` is a model budget
/// has `has_budget = 1` (its `reserved_usd` then counts that model's open holds).
const SCHEMA_V3: &str = "ALTER TABLE tenants ADD COLUMN model_budgets TEXT;
ALTER TABLE holds ADD COLUMN model_budget_usd TEXT;
ALTER TABLE budgets ADD COLUMN has_budget INTEGER NOT NULL DEFAULT 0;";

/// Version 4: one price table per region, keyed by (region, model_id). Existing
/// prices move to the default region, `global`.
const SCHEMA_V4: &str = "CREATE TABLE pricing_by_region (
    region TEXT NOT NULL,
    model_id TEXT NOT NULL,
    input TEXT NOT NULL,
    output TEXT NOT NULL,
    cache_read TEXT,
    cache_write TEXT,
    PRIMARY KEY (region, model_id)
);
INSERT INTO pricing_by_region (region, model_id, input, output, cache_read, cache_write)
    SELECT 'global', model_id, input, output, cache_read, cache_write FROM pricing;
DROP TABLE pricing;
ALTER TABLE pricing_by_region RENAME TO pricing;";

/// Version 5: the input estimate a hold was priced with (an estimated commit
/// never charges more input), whether a usage row was cut by that cap or the
/// output limit, and budget leases (see `LeaseRecord`), swept by
/// `(state, expires_at)` like holds. Holds still open at the upgrade were
/// priced with an estimate nobody recorded: they get no input cap (as before).
const SCHEMA_V5: &str =
    "ALTER TABLE holds ADD COLUMN input_tokens_estimate INTEGER NOT NULL DEFAULT 0;
UPDATE holds SET input_tokens_estimate = 9223372036854775807 WHERE state = 'open';
ALTER TABLE usage ADD COLUMN capped INTEGER NOT NULL DEFAULT 0;
CREATE TABLE leases (
    lease_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    application_id TEXT,
    model_id TEXT NOT NULL,
    target_model TEXT NOT NULL,
    rate_input TEXT NOT NULL,
    rate_output TEXT NOT NULL,
    rate_cache_read TEXT NOT NULL,
    rate_cache_write TEXT NOT NULL,
    default_max_output_tokens INTEGER NOT NULL,
    max_tokens_cap INTEGER,
    credential_ref TEXT NOT NULL,
    requested_model TEXT NOT NULL,
    reserved_usd TEXT NOT NULL,
    seq INTEGER NOT NULL,
    last_granted_usd TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX leases_open_by_expiry ON leases (state, expires_at);";

/// Version 6: several alert thresholds per tenant (`tenants.alert_thresholds`, a
/// JSON list of decimal strings; `alert_threshold` keeps the lowest), alerts
/// keyed by budget scope and threshold, and the alert outbox. The alerts
/// table is rebuilt (SQLite cannot change a primary key): existing rows become
/// scope `tenant`, and a `threshold` row gets the tenant's threshold of the
/// time, so it does not fire again in its period. Their `alert_id` is
/// `al_legacy_<n>` (they were delivered before the outbox existed).
const SCHEMA_V6: &str = "ALTER TABLE tenants ADD COLUMN alert_thresholds TEXT;
CREATE TABLE alerts_v6 (
    tenant_id TEXT NOT NULL,
    period TEXT NOT NULL,
    scope TEXT NOT NULL,
    kind TEXT NOT NULL,
    threshold TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    fired_at INTEGER NOT NULL,
    spent_usd TEXT NOT NULL,
    budget_usd TEXT NOT NULL,
    request_id TEXT,
    cost_usd TEXT,
    PRIMARY KEY (tenant_id, period, scope, kind, threshold)
);
INSERT INTO alerts_v6 (tenant_id, period, scope, kind, threshold, alert_id, fired_at,
        spent_usd, budget_usd, request_id, cost_usd)
    SELECT a.tenant_id, a.period, 'tenant', a.kind,
        CASE WHEN a.kind = 'threshold' THEN COALESCE(
            (SELECT t.alert_threshold FROM tenants t WHERE t.tenant_id = a.tenant_id), '')
        ELSE '' END,
        'al_legacy_' || a.rowid, a.fired_at, a.spent_usd, a.budget_usd, a.request_id, a.cost_usd
    FROM alerts a;
DROP TABLE alerts;
ALTER TABLE alerts_v6 RENAME TO alerts;
CREATE TABLE alert_outbox (
    alert_id TEXT NOT NULL,
    target TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    delivered_at INTEGER,
    PRIMARY KEY (alert_id, target)
);
CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_at);";

/// Version 8: fleet-wide rate limits: per-model TPM on the tenant, and the per-minute
/// counters every sidecar sharing the file counts in.
const SCHEMA_V8: &str = "ALTER TABLE tenants ADD COLUMN model_rate_limit_tpm TEXT;
CREATE TABLE rate_windows (
    tenant_id TEXT NOT NULL,
    window INTEGER NOT NULL,
    counter TEXT NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, window, counter)
);";

/// Version 9: nested budgets: application and user budgets on the tenant
/// (JSON objects of decimal strings, and the default user budget), and on each
/// hold the application and user budgets it was admitted under. Their rows are
/// budget rows with scope `app:<id>` / `user:<id>`.
const SCHEMA_V9: &str = "ALTER TABLE tenants ADD COLUMN application_budgets TEXT;
ALTER TABLE tenants ADD COLUMN user_budgets TEXT;
ALTER TABLE tenants ADD COLUMN default_user_budget TEXT;
ALTER TABLE holds ADD COLUMN app_budget_usd TEXT;
ALTER TABLE holds ADD COLUMN user_budget_usd TEXT;";

/// Version 7: key lifecycle: an optional expiry, and when the key was last used.
const SCHEMA_V7: &str = "ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
ALTER TABLE api_keys ADD COLUMN last_used_at INTEGER;";

/// Ordered schema migrations: entry `i` takes a database from `user_version` `i`
/// to `i + 1`. Append only; never edit a released entry.
pub const MIGRATIONS: &[&str] = &[
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
    SCHEMA_V9,
];

/// The schema version this binary writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`] in one transaction (all pending
/// migrations or none). A database written by a newer binary is refused.
pub fn migrate(conn: &mut Connection) -> Result<i64> {
    apply_migrations(conn, MIGRATIONS)
}

/// [`migrate`] with an explicit migration list (tests exercise failures with it).
/// Returns the version the database had before.
pub fn apply_migrations(conn: &mut Connection, migrations: &[&str]) -> Result<i64> {
    let target = migrations.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > target {
        return Err(Error::Corrupt(format!(
            "ledger schema version {version} is newer than this tollgate-sidecar supports \
             ({target}); upgrade the binary (refusing to open rather than risk the ledger)"
        )));
    }
    let from = usize::try_from(version.max(0)).unwrap_or(0);
    for (i, m) in migrations.iter().enumerate().skip(from) {
        tx.execute_batch(m).map_err(|e| {
            Error::Internal(format!("schema migration {} -> {} failed: {e}", i, i + 1))
        })?;
    }
    if version != target {
        tx.pragma_update(None, "user_version", target)?;
    }
    tx.commit()?;
    Ok(version)
}

/// Decimal column stored as text.
struct Dec(Decimal);

impl ToSql for Dec {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.to_string()))
    }
}

impl FromSql for Dec {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        s.parse::<Decimal>()
            .map(Dec)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

fn dec(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Decimal> {
    Ok(row.get::<_, Dec>(idx)?.0)
}

fn opt_dec(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<Decimal>> {
    Ok(row.get::<_, Option<Dec>>(idx)?.map(|d| d.0))
}

fn u(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    Ok(u64::try_from(row.get::<_, i64>(idx)?).unwrap_or(0))
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub struct SqliteStore {
    /// Jobs for the writer thread (the only connection that writes).
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    /// What the writer applies as `PRAGMA synchronous` before its next batch.
    synchronous: Arc<AtomicU8>,
    readers: Arc<ReadPool>,
    pricing_region: String,
}

/// `PRAGMA synchronous` for the ledger (`--sqlite-synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Synchronous {
    /// Every commit reaches the disk before it is acknowledged.
    #[default]
    Full,
    /// WAL is synced at checkpoints: durable across process crashes, not power loss.
    Normal,
}

impl Synchronous {
    /// The `PRAGMA synchronous` number (`NORMAL` = 1, `FULL` = 2).
    fn level(self) -> u8 {
        match self {
            Self::Full => 2,
            Self::Normal => 1,
        }
    }
}

/// Most jobs one write transaction takes (one fsync for all of them).
const MAX_BATCH: usize = 512;

/// Read connections (WAL: readers never wait for the writer, nor it for them).
const READERS: usize = 4;

/// A unit of work for the writer thread: `run` inside the batch's transaction
/// (in its own savepoint), then `finish` once the batch's `COMMIT` is known
/// (`Some(error)` when the batch did not commit: the job's changes are gone).
trait WriteJob: Send {
    fn run(&mut self, conn: &mut Connection);
    fn finish(self: Box<Self>, batch_error: Option<&BatchError>);
}

/// Why a whole batch failed (handed to every job of it).
#[derive(Debug, Clone)]
struct BatchError {
    code: Option<rusqlite::ffi::Error>,
    message: String,
}

impl BatchError {
    fn new(context: &str, e: &rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(code, msg) => Self {
                code: Some(*code),
                message: format!(
                    "{context}: {}",
                    msg.clone().unwrap_or_else(|| code.to_string())
                ),
            },
            other => Self {
                code: None,
                message: format!("{context}: {other}"),
            },
        }
    }

    fn to_error(&self) -> Error {
        match self.code {
            Some(code) => Error::Db(rusqlite::Error::SqliteFailure(
                code,
                Some(self.message.clone()),
            )),
            None => Error::Internal(self.message.clone()),
        }
    }
}

struct Job<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: Box<dyn FnOnce(Result<T>) + Send>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &mut Connection) {
        if let Some(f) = self.f.take() {
            self.out = Some(run_in_savepoint(conn, f));
        }
    }

    fn finish(self: Box<Self>, batch_error: Option<&BatchError>) {
        let out = match (batch_error, self.out) {
            (Some(e), _) => Err(e.to_error()),
            (None, Some(out)) => out,
            (None, None) => Err(Error::Internal("ledger write job did not run".into())),
        };
        (self.reply)(out);
    }
}

/// Runs one job in its own savepoint: an error (or a panic) rolls back only
/// that job's changes, never its batch-mates'.
fn run_in_savepoint<T>(
    conn: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T>,
) -> Result<T> {
    conn.execute_batch("SAVEPOINT tollgate_job")?;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(Error::Internal("ledger write job panicked".into())));
    if conn.is_autocommit() {
        // SQLite aborted the whole transaction (I/O error, disk full…); the
        // writer notices and fails the batch.
        return out;
    }
    match out {
        Ok(v) => {
            conn.execute_batch("RELEASE tollgate_job")?;
            Ok(v)
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO tollgate_job; RELEASE tollgate_job")?;
            Err(e)
        }
    }
}

/// The writer thread: takes the first job, drains what else is queued (up to
/// [`MAX_BATCH`]), runs them all in one `BEGIN IMMEDIATE` … `COMMIT`, and only
/// then answers their callers. Ends when the store (every sender) is dropped.
fn writer_loop(mut conn: Connection, jobs: mpsc::Receiver<Box<dyn WriteJob>>, sync: Arc<AtomicU8>) {
    let mut applied_sync = 0u8;
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(16);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let wanted = sync.load(Ordering::Acquire);
        if wanted != applied_sync {
            // `PRAGMA synchronous` cannot change inside a transaction.
            match conn.pragma_update(None, "synchronous", wanted) {
                Ok(()) => applied_sync = wanted,
                Err(e) => tracing::error!(error = %e, "cannot set PRAGMA synchronous"),
            }
        }
        let failure = run_batch(&mut conn, &mut batch);
        for job in batch {
            job.finish(failure.as_ref());
        }
    }
}

/// Runs a batch in one transaction; `Some(error)` when it did not commit.
fn run_batch(conn: &mut Connection, batch: &mut [Box<dyn WriteJob>]) -> Option<BatchError> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return Some(BatchError::new("ledger transaction could not start", &e));
    }
    for job in batch.iter_mut() {
        job.run(conn);
        if conn.is_autocommit() {
            return Some(BatchError {
                code: None,
                message:
                    "ledger transaction was aborted by the database; nothing of it was written"
                        .into(),
            });
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => None,
        Err(e) => {
            let failure = BatchError::new("ledger commit failed", &e);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Some(failure)
        }
    }
}

/// A few read-only connections, each behind its own mutex.
struct ReadPool {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl ReadPool {
    fn open(path: &Path, n: usize) -> Result<Self> {
        let conns = (0..n)
            .map(|_| {
                let conn = Connection::open(path)?;
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                conn.pragma_update(None, "query_only", true)?;
                conn.set_prepared_statement_cache_capacity(64);
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    /// A free connection if there is one, else the next in turn.
    fn get(&self) -> std::sync::MutexGuard<'_, Connection> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        for k in 0..n {
            if let Ok(guard) = self.conns[(start + k) % n].try_lock() {
                return guard;
            }
        }
        self.conns[start % n]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl SqliteStore {
    /// Sets how hard each write is pushed to disk (default: `Full`). Applied by
    /// the writer before its next transaction; returns once it is in force.
    pub fn with_synchronous(self, mode: Synchronous) -> Result<Self> {
        self.synchronous.store(mode.level(), Ordering::Release);
        let level = self.write_blocking(|conn| {
            Ok(conn.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))?)
        })?;
        if level != i64::from(mode.level()) {
            return Err(Error::Internal(format!(
                "PRAGMA synchronous is {level}, wanted {mode:?}"
            )));
        }
        Ok(self)
    }

    /// Opens (creating if needed) the ledger file and its schema.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.set_prepared_statement_cache_capacity(64);
        let from = migrate(&mut conn)?;
        if from != SCHEMA_VERSION {
            tracing::info!(from, to = SCHEMA_VERSION, "ledger schema migrated");
        }
        let readers = ReadPool::open(path, READERS)?;
        let synchronous = Arc::new(AtomicU8::new(Synchronous::Full.level()));
        let (writer, jobs) = mpsc::channel();
        let sync = synchronous.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(conn, jobs, sync))?;
        Ok(Self {
            writer,
            synchronous,
            readers: Arc::new(readers),
            pricing_region: crate::pricing::DEFAULT_REGION.to_string(),
        })
    }

    /// Sets the region of the plain price methods (`Store::pricing_region`).
    pub fn with_pricing_region(mut self, region: &str) -> Self {
        self.pricing_region = region.to_string();
        self
    }

    fn submit<T, F>(&self, f: F, reply: Box<dyn FnOnce(Result<T>) + Send>) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let job = Box::new(Job {
            f: Some(f),
            out: None,
            reply,
        });
        self.writer
            .send(job)
            .map_err(|_| Error::Internal("ledger writer thread is gone".into()))
    }

    /// Runs `f` on the writer, in its own savepoint of the next group commit;
    /// resolves once that commit is on disk (or failed).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            f,
            Box::new(move |out| {
                let _ = tx.send(out);
            }),
        )?;
        rx.await
            .map_err(|_| Error::Internal("ledger writer dropped the job".into()))?
    }

    /// [`SqliteStore::write`] from synchronous code.
    fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.submit(
            f,
            Box::new(move |out| {
                let _ = tx.send(out);
            }),
        )?;
        rx.recv()
            .map_err(|_| Error::Internal("ledger writer dropped the job".into()))?
    }

    /// Runs a read on one of the read connections (committed data only).
    async fn with<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = readers.get();
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Internal(format!("store task failed: {e}")))?
    }
}

const TENANT_COLS: &str = "tenant_id, budget_usd, alert_threshold, reset_cycle, active, allowed_models, default_model, max_tokens_cap, rate_limit_rpm, rate_limit_tpm, model_budgets, alert_thresholds, model_rate_limit_tpm, application_budgets, user_budgets, default_user_budget";

fn tenant_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TenantConfig>> {
    let cycle: String = row.get(3)?;
    let allowed: String = row.get(5)?;
    let built = (|| {
        let reset_cycle = ResetCycle::parse(&cycle)
            .ok_or_else(|| Error::Corrupt(format!("reset_cycle {cycle:?}")))?;
        let allowed_models: Vec<String> = serde_json::from_str(&allowed)
            .map_err(|e| Error::Corrupt(format!("allowed_models: {e}")))?;
        Ok::<_, Error>((reset_cycle, allowed_models))
    })();
    let budget_map =
        |col: usize, name: &str| -> rusqlite::Result<Result<BTreeMap<String, Decimal>>> {
            let text: Option<String> = row.get(col)?;
            Ok(text
                .as_deref()
                .map(|t| parse_budget_map(name, t))
                .transpose()
                .map(Option::unwrap_or_default))
        };
    let model_budgets = match budget_map(10, "model_budgets")? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let application_budgets = match budget_map(13, "application_budgets")? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let user_budgets = match budget_map(14, "user_budgets")? {
        Ok(m) => m,
        Err(e) => return Ok(Err(e)),
    };
    let model_tpm: Option<String> = row.get(12)?;
    let model_rate_limit_tpm = match model_tpm
        .as_deref()
        .map(|t| {
            serde_json::from_str::<BTreeMap<String, u64>>(t)
                .map_err(|e| Error::Corrupt(format!("model_rate_limit_tpm: {e}")))
        })
        .transpose()
    {
        Ok(m) => m.unwrap_or_default(),
        Err(e) => return Ok(Err(e)),
    };
    let (reset_cycle, allowed_models) = match built {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let thresholds: Option<String> = row.get(11)?;
    let alert_thresholds = match thresholds.as_deref().map(parse_thresholds).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(TenantConfig {
        tenant_id: row.get(0)?,
        budget_usd: dec(row, 1)?,
        alert_threshold: dec(row, 2)?,
        reset_cycle,
        active: row.get::<_, i64>(4)? != 0,
        allowed_models,
        default_model: row.get(6)?,
        max_tokens_cap: row
            .get::<_, Option<i64>>(7)?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        rate_limit_rpm: row
            .get::<_, Option<i64>>(8)?
            .map(|v| u32::try_from(v).unwrap_or(0)),
        rate_limit_tpm: row
            .get::<_, Option<i64>>(9)?
            .map(|v| u64::try_from(v).unwrap_or(0)),
        model_budgets,
        model_rate_limit_tpm,
        alert_thresholds,
        application_budgets,
        user_budgets,
        default_user_budget_usd: opt_dec(row, 15)?,
    }))
}

fn parse_thresholds(text: &str) -> Result<Vec<Decimal>> {
    let raw: Vec<String> =
        serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("alert_thresholds: {e}")))?;
    raw.iter()
        .map(|v| {
            v.parse::<Decimal>()
                .map_err(|e| Error::Corrupt(format!("alert_thresholds: {e}")))
        })
        .collect()
}

fn thresholds_json(t: &[Decimal]) -> Result<Option<String>> {
    if t.is_empty() {
        return Ok(None);
    }
    let text: Vec<String> = t.iter().map(Decimal::to_string).collect();
    Ok(Some(serde_json::to_string(&text)?))
}

const OUTBOX_COLS: &str = "alert_id, target, tenant_id, payload, state, attempts, next_attempt_at, last_error, created_at, delivered_at";

fn outbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, OutboxEntry)> {
    let state: String = r.get(4)?;
    Ok((
        state,
        OutboxEntry {
            alert_id: r.get(0)?,
            target: r.get(1)?,
            tenant_id: r.get(2)?,
            payload: r.get(3)?,
            state: OutboxState::Pending,
            attempts: u32::try_from(r.get::<_, i64>(5)?).unwrap_or(u32::MAX),
            next_attempt_ms: r.get(6)?,
            last_error: r.get(7)?,
            created_at_ms: r.get(8)?,
            delivered_at_ms: r.get(9)?,
        },
    ))
}

fn outbox_entries(
    rows: impl Iterator<Item = rusqlite::Result<(String, OutboxEntry)>>,
) -> Result<Vec<OutboxEntry>> {
    let mut out = Vec::new();
    for row in rows {
        let (state, mut e) = row?;
        e.state = OutboxState::parse(&state)
            .ok_or_else(|| Error::Corrupt(format!("outbox state {state:?}")))?;
        out.push(e);
    }
    Ok(out)
}

/// A tenant column holding budgets by model, application or user.
fn parse_budget_map(column: &str, text: &str) -> Result<BTreeMap<String, Decimal>> {
    let raw: BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|e| Error::Corrupt(format!("{column}: {e}")))?;
    raw.into_iter()
        .map(|(m, v)| {
            v.parse::<Decimal>()
                .map(|d| (m, d))
                .map_err(|e| Error::Corrupt(format!("{column}: {e}")))
        })
        .collect()
}

fn budget_map_json(m: &BTreeMap<String, Decimal>) -> Result<Option<String>> {
    if m.is_empty() {
        return Ok(None);
    }
    let text: BTreeMap<&String, String> = m.iter().map(|(k, v)| (k, v.to_string())).collect();
    Ok(Some(serde_json::to_string(&text)?))
}

const HOLD_COLS: &str = "request_id, tenant_id, period, model_id, target_model, application_id, cost_center, environment, user_id, max_output_tokens, hold_usd, budget_remaining_usd, rate_input, rate_output, rate_cache_read, rate_cache_write, created_at, expires_at, state, model_budget_usd, input_tokens_estimate, app_budget_usd, user_budget_usd";

fn hold_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Hold> {
    let state: String = row.get(18)?;
    let state = HoldState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            18,
            rusqlite::types::Type::Text,
            format!("unknown hold state {state:?}").into(),
        )
    })?;
    Ok(Hold {
        request_id: row.get(0)?,
        tenant_id: row.get(1)?,
        period: row.get(2)?,
        model_id: row.get(3)?,
        target_model: row.get(4)?,
        attribution: Attribution {
            application_id: row.get(5)?,
            cost_center: row.get(6)?,
            environment: row.get(7)?,
            user_id: row.get(8)?,
        },
        max_output_tokens: u(row, 9)?,
        hold_usd: dec(row, 10)?,
        budget_remaining_usd: dec(row, 11)?,
        rates: Rates {
            input: dec(row, 12)?,
            output: dec(row, 13)?,
            cache_read: dec(row, 14)?,
            cache_write: dec(row, 15)?,
        },
        created_at_ms: row.get(16)?,
        expires_at_ms: row.get(17)?,
        state,
        model_budget_usd: opt_dec(row, 19)?,
        input_tokens_estimate: u(row, 20)?,
        app_budget_usd: opt_dec(row, 21)?,
        user_budget_usd: opt_dec(row, 22)?,
    })
}

fn get_hold_tx(conn: &Connection, request_id: &str) -> Result<Option<Hold>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {HOLD_COLS} FROM holds WHERE request_id = ?1"
        ))?
        .query_row(params![request_id], hold_from_row)
        .optional()?)
}

const BUDGET_COLS: &str = "budget_usd, spent_usd, reserved_usd, input_tokens, output_tokens, cache_read_input_tokens, cache_write_input_tokens, requests";

fn totals_from_row(period: &str, row: &rusqlite::Row<'_>) -> rusqlite::Result<Totals> {
    Ok(Totals {
        period: period.to_string(),
        budget_usd: dec(row, 0)?,
        reserved_usd: dec(row, 2)?,
        counters: Counters {
            spent_usd: dec(row, 1)?,
            input_tokens: u(row, 3)?,
            output_tokens: u(row, 4)?,
            cache_read_input_tokens: u(row, 5)?,
            cache_write_input_tokens: u(row, 6)?,
            requests: u(row, 7)?,
        },
    })
}

fn load_row(tx: &Connection, tenant: &str, period: &str, scope: &str) -> Result<Option<Totals>> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {BUDGET_COLS} FROM budgets WHERE tenant_id = ?1 AND period = ?2 AND scope = ?3"
        ))?
        .query_row(params![tenant, period, scope], |row| {
            totals_from_row(period, row)
        })
        .optional()?)
}

fn ensure_row(
    tx: &Connection,
    tenant: &str,
    period: &str,
    scope: &str,
    budget: Decimal,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO budgets (tenant_id, period, scope, budget_usd) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![tenant, period, scope, Dec(budget)])?;
    Ok(())
}

fn store_row(tx: &Connection, tenant: &str, scope: &str, t: &Totals) -> Result<()> {
    let c = &t.counters;
    tx.prepare_cached(
        "UPDATE budgets SET spent_usd = ?4, reserved_usd = ?5, input_tokens = ?6, output_tokens = ?7,
            cache_read_input_tokens = ?8, cache_write_input_tokens = ?9, requests = ?10
         WHERE tenant_id = ?1 AND period = ?2 AND scope = ?3",
    )?
    .execute(params![
            tenant,
            t.period,
            scope,
            Dec(c.spent_usd),
            Dec(t.reserved_usd),
            i(c.input_tokens),
            i(c.output_tokens),
            i(c.cache_read_input_tokens),
            i(c.cache_write_input_tokens),
            i(c.requests)
        ])?;
    Ok(())
}

fn add_usage(c: &mut Counters, usage: &Usage, cost: Decimal) {
    c.spent_usd += cost;
    c.input_tokens = c.input_tokens.saturating_add(usage.input_tokens);
    c.output_tokens = c.output_tokens.saturating_add(usage.output_tokens);
    c.cache_read_input_tokens = c
        .cache_read_input_tokens
        .saturating_add(usage.cache_read_input_tokens);
    c.cache_write_input_tokens = c
        .cache_write_input_tokens
        .saturating_add(usage.cache_write_input_tokens);
    c.requests = c.requests.saturating_add(1);
}

fn set_state(tx: &Connection, request_id: &str, state: HoldState, now_ms: i64) -> Result<()> {
    tx.prepare_cached("UPDATE holds SET state = ?2, settled_at = ?3 WHERE request_id = ?1")?
        .execute(params![request_id, state.as_str(), now_ms])?;
    Ok(())
}

/// `reserved −= hold` on the hold's period row (never below zero), and on the
/// row of each scoped budget it was admitted under.
fn unreserve(tx: &Connection, hold: &Hold) -> Result<()> {
    let scopes = hold
        .scoped_budgets()
        .iter()
        .map(ScopedBudget::row)
        .collect::<Vec<_>>();
    for scope in std::iter::once("ALL").chain(scopes.iter().map(String::as_str)) {
        if let Some(mut t) = load_row(tx, &hold.tenant_id, &hold.period, scope)? {
            t.reserved_usd = (t.reserved_usd - hold.hold_usd).max(Decimal::ZERO);
            store_row(tx, &hold.tenant_id, scope, &t)?;
        }
    }
    Ok(())
}

/// Charges a settled hold's usage to one of its period's rows (created with
/// `budget_if_new` when missing), and takes the hold off the row's `reserved`
/// when it is still counted there. Returns the row as stored.
fn charge_row(
    tx: &Connection,
    hold: &Hold,
    key: &str,
    budget_if_new: Decimal,
    counted: bool,
    usage: &Usage,
    cost: Decimal,
) -> Result<Totals> {
    ensure_row(tx, &hold.tenant_id, &hold.period, key, budget_if_new)?;
    let mut row = load_row(tx, &hold.tenant_id, &hold.period, key)?
        .ok_or_else(|| Error::Internal(format!("budget row {key} vanished")))?;
    if counted {
        row.reserved_usd = (row.reserved_usd - hold.hold_usd).max(Decimal::ZERO);
    }
    add_usage(&mut row.counters, usage, cost);
    store_row(tx, &hold.tenant_id, key, &row)?;
    Ok(row)
}

/// The cost recorded for a settled request, if any.
fn usage_cost(conn: &Connection, request_id: &str) -> Result<Option<Decimal>> {
    let cost: Option<Dec> = conn
        .prepare_cached("SELECT cost_usd FROM usage WHERE request_id = ?1")?
        .query_row(params![request_id], |r| r.get(0))
        .optional()?;
    Ok(cost.map(|c| c.0))
}

fn insert_usage(conn: &Connection, u: &UsageRecord) -> Result<()> {
    let a = &u.attribution;
    conn.prepare_cached(
        "INSERT INTO usage (request_id, tenant_id, application_id, model_id, cost_center, environment,
           user_id, input_tokens, output_tokens, cache_read_input_tokens, cache_write_input_tokens,
           cost_usd, estimated, at, capped)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        u.request_id,
        u.tenant_id,
        a.application_id,
        u.model_id,
        a.cost_center,
        a.environment,
        a.user_id,
        i(u.usage.input_tokens),
        i(u.usage.output_tokens),
        i(u.usage.cache_read_input_tokens),
        i(u.usage.cache_write_input_tokens),
        Dec(u.cost_usd),
        u.estimated,
        u.at_ms,
        u.capped,
    ])?;
    Ok(())
}

const LEASE_COLS: &str = "lease_id, tenant_id, period, application_id, model_id, target_model, rate_input, rate_output, rate_cache_read, rate_cache_write, default_max_output_tokens, max_tokens_cap, credential_ref, requested_model, reserved_usd, seq, last_granted_usd, created_at, expires_at, state";

fn lease_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LeaseRecord> {
    let state: String = row.get(19)?;
    let state = HoldState::parse(&state).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            19,
            rusqlite::types::Type::Text,
            format!("unknown lease state {state:?}").into(),
        )
    })?;
    Ok(LeaseRecord {
        lease_id: row.get(0)?,
        period: row.get(2)?,
        terms: LeaseTerms {
            tenant_id: row.get(1)?,
            application_id: row.get(3)?,
            model_id: row.get(4)?,
            target_model: row.get(5)?,
            rates: Rates {
                input: dec(row, 6)?,
                output: dec(row, 7)?,
                cache_read: dec(row, 8)?,
                cache_write: dec(row, 9)?,
            },
            default_max_output_tokens: u(row, 10)?,
            max_tokens_cap: row
                .get::<_, Option<i64>>(11)?
                .map(|v| u64::try_from(v).unwrap_or(0)),
        },
        credential_ref: row.get(12)?,
        requested_model: row.get(13)?,
        reserved_usd: dec(row, 14)?,
        seq: u(row, 15)?,
        last_granted_usd: dec(row, 16)?,
        created_at_ms: row.get(17)?,
        expires_at_ms: row.get(18)?,
        state,
    })
}

fn get_lease_tx(conn: &Connection, lease_id: &str) -> Result<Option<LeaseRecord>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {LEASE_COLS} FROM leases WHERE lease_id = ?1"
        ))?
        .query_row(params![lease_id], lease_from_row)
        .optional()?)
}

fn insert_lease(conn: &Connection, l: &LeaseRecord) -> Result<()> {
    let t = &l.terms;
    conn.prepare_cached(&format!(
        "INSERT INTO leases ({LEASE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
         ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
    ))?
    .execute(params![
        l.lease_id,
        t.tenant_id,
        l.period,
        t.application_id,
        t.model_id,
        t.target_model,
        Dec(t.rates.input),
        Dec(t.rates.output),
        Dec(t.rates.cache_read),
        Dec(t.rates.cache_write),
        i(t.default_max_output_tokens),
        t.max_tokens_cap.map(i),
        l.credential_ref,
        l.requested_model,
        Dec(l.reserved_usd),
        i(l.seq),
        Dec(l.last_granted_usd),
        l.created_at_ms,
        l.expires_at_ms,
        l.state.as_str(),
    ])?;
    Ok(())
}

/// Writes a lease's mutable fields back.
fn store_lease(conn: &Connection, l: &LeaseRecord) -> Result<()> {
    conn.prepare_cached(
        "UPDATE leases SET reserved_usd = ?2, seq = ?3, last_granted_usd = ?4, expires_at = ?5,
           state = ?6 WHERE lease_id = ?1",
    )?
    .execute(params![
        l.lease_id,
        Dec(l.reserved_usd),
        i(l.seq),
        Dec(l.last_granted_usd),
        l.expires_at_ms,
        l.state.as_str(),
    ])?;
    Ok(())
}

/// Gives all a lease holds back to its period's `ALL` row and closes it.
fn close_lease(conn: &Connection, lease: &mut LeaseRecord, state: HoldState) -> Result<()> {
    if let Some(mut t) = load_row(conn, &lease.terms.tenant_id, &lease.period, "ALL")? {
        t.reserved_usd = (t.reserved_usd - lease.reserved_usd).max(Decimal::ZERO);
        store_row(conn, &lease.terms.tenant_id, "ALL", &t)?;
    }
    lease.reserved_usd = Decimal::ZERO;
    lease.state = state;
    store_lease(conn, lease)
}

#[async_trait]
impl Store for SqliteStore {
    async fn put_tenant(&self, cfg: &TenantConfig, current_period: &str) -> Result<()> {
        let cfg = cfg.clone();
        let period = current_period.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            tx.execute(
                &format!(
                    "INSERT INTO tenants ({TENANT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
                     ON CONFLICT (tenant_id) DO UPDATE SET budget_usd = excluded.budget_usd,
                       alert_threshold = excluded.alert_threshold, reset_cycle = excluded.reset_cycle,
                       active = excluded.active, allowed_models = excluded.allowed_models,
                       default_model = excluded.default_model, max_tokens_cap = excluded.max_tokens_cap,
                       rate_limit_rpm = excluded.rate_limit_rpm,
                       rate_limit_tpm = excluded.rate_limit_tpm,
                       model_budgets = excluded.model_budgets,
                       alert_thresholds = excluded.alert_thresholds,
                       model_rate_limit_tpm = excluded.model_rate_limit_tpm,
                       application_budgets = excluded.application_budgets,
                       user_budgets = excluded.user_budgets,
                       default_user_budget = excluded.default_user_budget"
                ),
                params![
                    cfg.tenant_id,
                    Dec(cfg.budget_usd),
                    Dec(cfg.alert_threshold),
                    cfg.reset_cycle.as_str(),
                    cfg.active,
                    serde_json::to_string(&cfg.allowed_models)?,
                    cfg.default_model,
                    cfg.max_tokens_cap.map(i),
                    cfg.rate_limit_rpm.map(i64::from),
                    cfg.rate_limit_tpm.map(i),
                    budget_map_json(&cfg.model_budgets)?,
                    thresholds_json(&cfg.alert_thresholds)?,
                    (!cfg.model_rate_limit_tpm.is_empty())
                        .then(|| serde_json::to_string(&cfg.model_rate_limit_tpm))
                        .transpose()?,
                    budget_map_json(&cfg.application_budgets)?,
                    budget_map_json(&cfg.user_budgets)?,
                    cfg.default_user_budget_usd.map(Dec),
                ],
            )?;
            tx.execute(
                "UPDATE budgets SET budget_usd = ?3 WHERE tenant_id = ?1 AND period = ?2 AND scope = 'ALL'",
                params![cfg.tenant_id, period, Dec(cfg.budget_usd)],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn delete_tenant(&self, tenant_id: &str, now_ms: i64) -> Result<TenantDeletion> {
        let t = tenant_id.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let exists = tx
                .query_row("SELECT 1 FROM tenants WHERE tenant_id = ?1", params![t], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if !exists {
                return Ok(TenantDeletion::NotFound);
            }
            let mut stmt = tx.prepare(
                "SELECT reserved_usd FROM budgets WHERE tenant_id = ?1 AND scope = 'ALL'",
            )?;
            let reserved = stmt
                .query_map(params![t], |r| dec(r, 0))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .sum::<Decimal>();
            drop(stmt);
            if reserved > Decimal::ZERO {
                return Ok(TenantDeletion::Busy {
                    reserved_usd: reserved,
                });
            }
            tx.execute("DELETE FROM tenants WHERE tenant_id = ?1", params![t])?;
            tx.execute("DELETE FROM profiles WHERE tenant_id = ?1", params![t])?;
            tx.execute(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE tenant_id = ?1",
                params![t, now_ms],
            )?;
            tx.execute(
                "UPDATE sigv4_credentials SET revoked_at = COALESCE(revoked_at, ?2) WHERE tenant_id = ?1",
                params![t, now_ms],
            )?;
            tx.commit()?;
            Ok(TenantDeletion::Deleted)
        })
        .await
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantConfig>> {
        let id = tenant_id.to_string();
        self.with(move |conn| {
            conn.query_row(
                &format!("SELECT {TENANT_COLS} FROM tenants WHERE tenant_id = ?1"),
                params![id],
                tenant_from_row,
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn check_ready(&self) -> Result<()> {
        self.with(|conn| {
            conn.query_row("SELECT count(*) FROM tenants", [], |_| Ok(()))?;
            Ok(())
        })
        .await?;
        self.write(|_| Ok(())).await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TENANT_COLS} FROM tenants ORDER BY tenant_id"
            ))?;
            let rows = stmt.query_map([], tenant_from_row)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r??);
            }
            Ok(out)
        })
        .await
    }

    fn pricing_region(&self) -> &str {
        &self.pricing_region
    }

    async fn put_price_in(&self, region: &str, price: &ModelPrice) -> Result<()> {
        let p = price.clone();
        let region = region.to_string();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO pricing (region, model_id, input, output, cache_read, cache_write) VALUES (?6, ?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (region, model_id) DO UPDATE SET input = excluded.input, output = excluded.output,
                   cache_read = excluded.cache_read, cache_write = excluded.cache_write",
                params![
                    p.model_id,
                    Dec(p.input),
                    Dec(p.output),
                    p.cache_read.map(Dec),
                    p.cache_write.map(Dec),
                    region,
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_price_in(&self, region: &str, model_id: &str) -> Result<bool> {
        let (r, m) = (region.to_string(), model_id.to_string());
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM pricing WHERE region = ?1 AND model_id = ?2",
                params![r, m],
            )? > 0)
        })
        .await
    }

    async fn get_price_in(&self, region: &str, model_id: &str) -> Result<Option<ModelPrice>> {
        let id = model_id.to_string();
        let region = region.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT model_id, input, output, cache_read, cache_write FROM pricing WHERE region = ?1 AND model_id = ?2",
                    params![region, id],
                    price_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_prices_in(&self, region: &str) -> Result<Vec<ModelPrice>> {
        let region = region.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT model_id, input, output, cache_read, cache_write FROM pricing WHERE region = ?1 ORDER BY model_id",
            )?;
            let rows = stmt.query_map(params![region], price_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn put_alias(&self, alias: &str, model_id: &str) -> Result<()> {
        let (a, m) = (alias.to_string(), model_id.to_string());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO aliases (alias, model_id) VALUES (?1, ?2)
                 ON CONFLICT (alias) DO UPDATE SET model_id = excluded.model_id",
                params![a, m],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let a = alias.to_string();
        self.write(move |conn| {
            Ok(conn.execute("DELETE FROM aliases WHERE alias = ?1", params![a])? > 0)
        })
        .await
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<String>> {
        let a = alias.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT model_id FROM aliases WHERE alias = ?1",
                    params![a],
                    |r| r.get(0),
                )
                .optional()?)
        })
        .await
    }

    async fn list_aliases(&self) -> Result<BTreeMap<String, String>> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT alias, model_id FROM aliases")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?)
        })
        .await
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        let p = profile.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO profiles (tenant_id, application_id, model_id, arn) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, application_id, model_id) DO UPDATE SET arn = excluded.arn",
                params![
                    p.tenant_id,
                    p.application_id.unwrap_or_default(),
                    p.model_id,
                    p.arn
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_profile(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model_id: &str,
    ) -> Result<bool> {
        let (t, a, m) = (
            tenant_id.to_string(),
            application_id.unwrap_or_default().to_string(),
            model_id.to_string(),
        );
        self.write(move |conn| {
            Ok(conn.execute(
                "DELETE FROM profiles WHERE tenant_id = ?1 AND application_id = ?2 AND model_id = ?3",
                params![t, a, m],
            )? > 0)
        })
        .await
    }

    async fn list_profiles(&self, tenant_id: &str) -> Result<Vec<Profile>> {
        let t = tenant_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant_id, application_id, model_id, arn FROM profiles WHERE tenant_id = ?1
                 ORDER BY application_id, model_id",
            )?;
            let rows = stmt.query_map(params![t], |r| {
                let app: String = r.get(1)?;
                Ok(Profile {
                    tenant_id: r.get(0)?,
                    application_id: (!app.is_empty()).then_some(app),
                    model_id: r.get(2)?,
                    arn: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn insert_sigv4_credential(&self, cred: &SigV4CredentialRecord) -> Result<bool> {
        let c = cred.clone();
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO sigv4_credentials (access_key_id, tenant_id, application_id, sealed_secret, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL)",
                params![c.access_key_id, c.tenant_id, c.application_id, c.sealed_secret, c.created_at_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn find_sigv4_credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SigV4CredentialRecord>> {
        let a = access_key_id.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT access_key_id, tenant_id, application_id, sealed_secret, created_at, revoked_at
                     FROM sigv4_credentials WHERE access_key_id = ?1 AND revoked_at IS NULL",
                    params![a],
                    sigv4_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_sigv4_credentials(&self, tenant_id: &str) -> Result<Vec<SigV4CredentialRecord>> {
        let t = tenant_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT access_key_id, tenant_id, application_id, sealed_secret, created_at, revoked_at
                 FROM sigv4_credentials WHERE tenant_id = ?1 ORDER BY created_at, access_key_id",
            )?;
            let rows = stmt.query_map(params![t], sigv4_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_sigv4_credential(
        &self,
        tenant_id: &str,
        access_key_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let (t, a) = (tenant_id.to_string(), access_key_id.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE sigv4_credentials SET revoked_at = COALESCE(revoked_at, ?3)
                 WHERE tenant_id = ?1 AND access_key_id = ?2",
                params![t, a, now_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_all_sigv4_credentials(&self) -> Result<Vec<SigV4CredentialRecord>> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT access_key_id, tenant_id, application_id, sealed_secret, created_at, revoked_at
                 FROM sigv4_credentials ORDER BY access_key_id",
            )?;
            let rows = stmt.query_map([], sigv4_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn replace_sigv4_sealed_secret(
        &self,
        access_key_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool> {
        let (a, old, new) = (access_key_id.to_string(), old.to_string(), new.to_string());
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE sigv4_credentials SET sealed_secret = ?3
                 WHERE access_key_id = ?1 AND sealed_secret = ?2",
                params![a, old, new],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<bool> {
        let k = key.clone();
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO api_keys (key_id, key_hash, tenant_id, application_id, created_at, revoked_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
                params![k.key_id, k.key_hash, k.tenant_id, k.application_id, k.created_at_ms, k.expires_at_ms],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        let h = key_hash.to_string();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT key_id, key_hash, tenant_id, application_id, created_at, revoked_at, expires_at, last_used_at FROM api_keys
                     WHERE key_hash = ?1 AND revoked_at IS NULL",
                    params![h],
                    key_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>> {
        let t = tenant_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT key_id, key_hash, tenant_id, application_id, created_at, revoked_at, expires_at, last_used_at FROM api_keys
                 WHERE tenant_id = ?1 ORDER BY created_at, key_id",
            )?;
            let rows = stmt.query_map(params![t], key_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn revoke_key(&self, tenant_id: &str, key_id: &str, now_ms: i64) -> Result<bool> {
        let (t, k) = (tenant_id.to_string(), key_id.to_string());
        self.write(move |conn| {
            let exists: Option<i64> = conn
                .query_row(
                    "SELECT 1 FROM api_keys WHERE tenant_id = ?1 AND key_id = ?2",
                    params![t, k],
                    |r| r.get(0),
                )
                .optional()?;
            conn.execute(
                "UPDATE api_keys SET revoked_at = ?3 WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                params![t, k, now_ms],
            )?;
            Ok(exists.is_some())
        })
        .await
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let used = used.to_vec();
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE key_hash = ?1",
            )?;
            for (hash, at) in &used {
                stmt.execute(params![hash, at])?;
            }
            Ok(())
        })
        .await
    }

    async fn take_rate(
        &self,
        tenant_id: &str,
        window: i64,
        takes: &[RateTake],
    ) -> Result<RateOutcome> {
        let (t, takes) = (tenant_id.to_string(), takes.to_vec());
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let mut used = Vec::with_capacity(takes.len());
            for take in &takes {
                let n: i64 = tx
                    .query_row(
                        "SELECT used FROM rate_windows WHERE tenant_id = ?1 AND window = ?2 AND counter = ?3",
                        params![t, window, take.counter],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                used.push(u64::try_from(n).unwrap_or(0));
            }
            if let Some(full) = takes
                .iter()
                .zip(&used)
                .find(|(take, n)| n.saturating_add(take.amount) > take.limit)
            {
                return Ok(RateOutcome::Refused {
                    counter: full.0.counter.clone(),
                    used,
                });
            }
            for (take, n) in takes.iter().zip(used.iter_mut()) {
                tx.execute(
                    "INSERT INTO rate_windows (tenant_id, window, counter, used) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant_id, window, counter) DO UPDATE SET used = used + excluded.used",
                    params![t, window, take.counter, i(take.amount)],
                )?;
                *n += take.amount;
            }
            tx.commit()?;
            Ok(RateOutcome::Taken { used })
        })
        .await
    }

    async fn adjust_rate(
        &self,
        tenant_id: &str,
        window: i64,
        counter: &str,
        delta: i64,
    ) -> Result<()> {
        let (t, c) = (tenant_id.to_string(), counter.to_string());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO rate_windows (tenant_id, window, counter, used) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id, window, counter) DO UPDATE SET used = used + excluded.used",
                params![t, window, c, delta],
            )?;
            Ok(())
        })
        .await
    }

    async fn prune_rate_windows(&self, before_window: i64) -> Result<()> {
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM rate_windows WHERE window < ?1",
                params![before_window],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_hold(&self, request_id: &str) -> Result<Option<Hold>> {
        let id = request_id.to_string();
        self.with(move |conn| get_hold_tx(conn, &id)).await
    }

    async fn reserve(&self, hold: &Hold, period_budget: Decimal) -> Result<ReserveOutcome> {
        let h = hold.clone();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(existing) = get_hold_tx(&tx, &h.request_id)? {
                return Ok(ReserveOutcome::Existing(Box::new(existing)));
            }
            // Every scoped budget (model, application, user) must admit it.
            let mut scope_rows = Vec::new();
            for scope in h.scoped_budgets() {
                let key = scope.row();
                ensure_row(&tx, &h.tenant_id, &h.period, &key, scope.budget_usd)?;
                tx.execute(
                    "UPDATE budgets SET budget_usd = ?4, has_budget = 1
                     WHERE tenant_id = ?1 AND period = ?2 AND scope = ?3",
                    params![h.tenant_id, h.period, key, Dec(scope.budget_usd)],
                )?;
                let row = load_row(&tx, &h.tenant_id, &h.period, &key)?
                    .ok_or_else(|| Error::Internal("scope row vanished".into()))?;
                let available = row.available();
                if !crate::ledger::admits(available, h.hold_usd) {
                    // Keep the rows' budgets in step with the configuration, as
                    // an admitted hold would.
                    tx.commit()?;
                    return Ok(ReserveOutcome::ScopeInsufficient {
                        scope,
                        available,
                        spent: row.counters.spent_usd,
                        budget: row.budget_usd,
                    });
                }
                scope_rows.push((key, row));
            }
            ensure_row(&tx, &h.tenant_id, &h.period, "ALL", period_budget)?;
            let mut t = load_row(&tx, &h.tenant_id, &h.period, "ALL")?
                .ok_or_else(|| Error::Internal("period row vanished".into()))?;
            let available = t.available();
            if !crate::ledger::admits(available, h.hold_usd) {
                return Ok(ReserveOutcome::Insufficient {
                    available,
                    spent: t.counters.spent_usd,
                    budget: t.budget_usd,
                });
            }
            t.reserved_usd += h.hold_usd;
            store_row(&tx, &h.tenant_id, "ALL", &t)?;
            for (key, mut row) in scope_rows {
                row.reserved_usd += h.hold_usd;
                store_row(&tx, &h.tenant_id, &key, &row)?;
            }
            let remaining = t.available();
            tx.prepare_cached(&format!(
                "INSERT INTO holds ({HOLD_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,
                 ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
            ))?
            .execute(params![
                h.request_id,
                h.tenant_id,
                h.period,
                h.model_id,
                h.target_model,
                h.attribution.application_id,
                h.attribution.cost_center,
                h.attribution.environment,
                h.attribution.user_id,
                i(h.max_output_tokens),
                Dec(h.hold_usd),
                Dec(remaining),
                Dec(h.rates.input),
                Dec(h.rates.output),
                Dec(h.rates.cache_read),
                Dec(h.rates.cache_write),
                h.created_at_ms,
                h.expires_at_ms,
                HoldState::Open.as_str(),
                h.model_budget_usd.map(Dec),
                i(h.input_tokens_estimate),
                h.app_budget_usd.map(Dec),
                h.user_budget_usd.map(Dec),
            ])?;
            tx.commit()?;
            Ok(ReserveOutcome::Admitted)
        })
        .await
    }

    async fn commit(
        &self,
        request_id: &str,
        usage: &Usage,
        estimated: bool,
        now_ms: i64,
    ) -> Result<CommitApplied> {
        let id = request_id.to_string();
        let reported = *usage;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(hold) = get_hold_tx(&tx, &id)? else {
                return Ok(CommitApplied::Unknown);
            };
            if hold.state == HoldState::Committed {
                return Ok(CommitApplied::Duplicate {
                    cost: usage_cost(&tx, &id)?,
                });
            }
            let (usage, capped) = crate::ledger::cap_usage(
                &reported,
                estimated,
                hold.max_output_tokens,
                hold.input_tokens_estimate,
            );
            let cost = hold.rates.cost(&usage).map_err(|_| {
                Error::invalid(format!(
                    "usage of request {id} overflows the cost arithmetic"
                ))
            })?;
            // The period's row, the model's (counted there under a model
            // budget), and the application and user rows it was admitted under.
            let open = hold.state == HoldState::Open;
            let total = charge_row(&tx, &hold, "ALL", Decimal::ZERO, open, &usage, cost)?;
            let model_counted = open && hold.model_budget_usd.is_some();
            let per_model = charge_row(
                &tx,
                &hold,
                &hold.model_id,
                Decimal::ZERO,
                model_counted,
                &usage,
                cost,
            )?;
            let mut scopes = Vec::new();
            for scope in hold.scoped_budgets() {
                let row = if scope.level == Level::Model {
                    per_model.clone()
                } else {
                    let key = scope.row();
                    charge_row(&tx, &hold, &key, scope.budget_usd, open, &usage, cost)?
                };
                scopes.push(ScopeTotals {
                    scope: ScopedBudget {
                        budget_usd: row.budget_usd,
                        ..scope
                    },
                    spent_usd: row.counters.spent_usd,
                    reserved_usd: row.reserved_usd,
                });
            }
            set_state(&tx, &id, HoldState::Committed, now_ms)?;
            insert_usage(
                &tx,
                &UsageRecord {
                    request_id: id.clone(),
                    tenant_id: hold.tenant_id.clone(),
                    model_id: hold.model_id.clone(),
                    attribution: hold.attribution.clone(),
                    usage,
                    cost_usd: cost,
                    estimated,
                    capped,
                    at_ms: now_ms,
                },
            )?;
            tx.commit()?;
            Ok(CommitApplied::Committed {
                capped,
                cost,
                usage,
                hold: Box::new(hold),
                totals: total,
                scopes,
            })
        })
        .await
    }

    async fn release(&self, request_id: &str, now_ms: i64) -> Result<bool> {
        let id = request_id.to_string();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(hold) = get_hold_tx(&tx, &id)? else {
                return Ok(false);
            };
            if hold.state != HoldState::Open {
                return Ok(false);
            }
            unreserve(&tx, &hold)?;
            set_state(&tx, &id, HoldState::Released, now_ms)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn expire_holds(&self, now_ms: i64) -> Result<u64> {
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let holds = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {HOLD_COLS} FROM holds WHERE state = 'open' AND expires_at <= ?1"
                ))?;
                let rows = stmt.query_map(params![now_ms], hold_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for hold in &holds {
                unreserve(&tx, hold)?;
                set_state(&tx, &hold.request_id, HoldState::Expired, now_ms)?;
            }
            let mut leases = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {LEASE_COLS} FROM leases WHERE state = 'open' AND expires_at <= ?1"
                ))?;
                let rows = stmt.query_map(params![now_ms], lease_from_row)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            for lease in &mut leases {
                close_lease(&tx, lease, HoldState::Expired)?;
            }
            tx.commit()?;
            Ok((holds.len() + leases.len()) as u64)
        })
        .await
    }

    fn supports_leases(&self) -> bool {
        true
    }

    async fn grant_lease(
        &self,
        lease: &LeaseRecord,
        sizing: &LeaseSizing,
        period_budget: Decimal,
    ) -> Result<LeaseOutcome> {
        let mut lease = lease.clone();
        let sizing = *sizing;
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if get_lease_tx(&tx, &lease.lease_id)?.is_some() {
                return Err(Error::invalid(format!(
                    "lease {} already exists",
                    lease.lease_id
                )));
            }
            let tenant = lease.terms.tenant_id.clone();
            ensure_row(&tx, &tenant, &lease.period, "ALL", period_budget)?;
            let mut t = load_row(&tx, &tenant, &lease.period, "ALL")?
                .ok_or_else(|| Error::Internal("period row vanished".into()))?;
            let available = t.available();
            let Some(granted) = sizing.grant(available) else {
                return Ok(LeaseOutcome::Insufficient {
                    available,
                    spent: t.counters.spent_usd,
                    budget: t.budget_usd,
                });
            };
            t.reserved_usd += granted;
            store_row(&tx, &tenant, "ALL", &t)?;
            lease.reserved_usd = granted;
            lease.seq = 0;
            lease.last_granted_usd = granted;
            lease.state = HoldState::Open;
            insert_lease(&tx, &lease)?;
            tx.commit()?;
            Ok(LeaseOutcome::Granted {
                granted,
                remaining: t.available(),
            })
        })
        .await
    }

    async fn renew_lease(
        &self,
        lease_id: &str,
        seq: u64,
        return_usd: Decimal,
        sizing: &LeaseSizing,
        current_period: &str,
        _now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<RenewApplied> {
        let id = lease_id.to_string();
        let sizing = *sizing;
        let current = current_period.to_string();
        if return_usd < Decimal::ZERO {
            return Err(Error::invalid(
                "a lease renewal cannot return a negative amount",
            ));
        }
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            let Some(mut lease) = get_lease_tx(&tx, &id)? else {
                return Ok(RenewApplied::Closed {
                    reason: "unknown lease".into(),
                });
            };
            match lease.state {
                HoldState::Open => {}
                HoldState::Expired => {
                    return Ok(RenewApplied::Closed {
                        reason: "lease expired".into(),
                    })
                }
                HoldState::Released | HoldState::Committed => {
                    return Ok(RenewApplied::Closed {
                        reason: "lease was released".into(),
                    })
                }
            }
            let tenant = lease.terms.tenant_id.clone();
            if lease.period != current {
                close_lease(&tx, &mut lease, HoldState::Released)?;
                tx.commit()?;
                return Ok(RenewApplied::Closed {
                    reason: "budget period ended".into(),
                });
            }
            let mut t = load_row(&tx, &tenant, &lease.period, "ALL")?
                .ok_or_else(|| Error::Internal("period row of an open lease vanished".into()))?;
            if seq == lease.seq {
                return Ok(RenewApplied::Renewed {
                    granted: lease.last_granted_usd,
                    remaining: t.available(),
                });
            }
            if seq < lease.seq {
                return Err(Error::invalid(format!(
                    "lease {id}: renewal {seq} is older than the last applied ({})",
                    lease.seq
                )));
            }
            let returned = return_usd.min(lease.reserved_usd);
            lease.reserved_usd -= returned;
            t.reserved_usd = (t.reserved_usd - returned).max(Decimal::ZERO);
            let granted = sizing.grant(t.available()).unwrap_or(Decimal::ZERO);
            lease.reserved_usd += granted;
            t.reserved_usd += granted;
            lease.seq = seq;
            lease.last_granted_usd = granted;
            lease.expires_at_ms = expires_at_ms;
            if sizing.want <= Decimal::ZERO && lease.reserved_usd.is_zero() {
                lease.state = HoldState::Released;
            }
            store_row(&tx, &tenant, "ALL", &t)?;
            store_lease(&tx, &lease)?;
            tx.commit()?;
            Ok(RenewApplied::Renewed {
                granted,
                remaining: t.available(),
            })
        })
        .await
    }

    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        let id = lease_id.to_string();
        self.with(move |conn| get_lease_tx(conn, &id)).await
    }

    async fn commit_leased(&self, c: &LeasedCommit, now_ms: i64) -> Result<CommitApplied> {
        let c = c.clone();
        self.write(move |conn| {
            let tx = conn.savepoint()?;
            if let Some(cost) = usage_cost(&tx, &c.request_id)? {
                return Ok(CommitApplied::Duplicate { cost: Some(cost) });
            }
            let Some(mut lease) = get_lease_tx(&tx, &c.lease_id)? else {
                return Ok(CommitApplied::Unknown);
            };
            let terms = &lease.terms;
            let tenant = terms.tenant_id.clone();
            let cost = terms.rates.cost(&c.usage).map_err(|_| {
                Error::invalid(format!(
                    "usage of request {} overflows the cost arithmetic",
                    c.request_id
                ))
            })?;
            ensure_row(&tx, &tenant, &lease.period, "ALL", Decimal::ZERO)?;
            let mut total = load_row(&tx, &tenant, &lease.period, "ALL")?
                .ok_or_else(|| Error::Internal("period row vanished".into()))?;
            if lease.state == HoldState::Open {
                let moved = c.hold_usd.max(Decimal::ZERO).min(lease.reserved_usd);
                lease.reserved_usd -= moved;
                total.reserved_usd = (total.reserved_usd - moved).max(Decimal::ZERO);
                store_lease(&tx, &lease)?;
            }
            add_usage(&mut total.counters, &c.usage, cost);
            store_row(&tx, &tenant, "ALL", &total)?;
            // Leases are never granted to tenants with model budgets: the model
            // row only counts.
            let model = lease.terms.model_id.clone();
            ensure_row(&tx, &tenant, &lease.period, &model, Decimal::ZERO)?;
            let mut per_model = load_row(&tx, &tenant, &lease.period, &model)?
                .ok_or_else(|| Error::Internal("model row vanished".into()))?;
            add_usage(&mut per_model.counters, &c.usage, cost);
            store_row(&tx, &tenant, &model, &per_model)?;
            let terms = &lease.terms;
            let attribution = Attribution {
                application_id: terms.application_id.clone(),
                ..c.attribution.clone()
            };
            insert_usage(
                &tx,
                &UsageRecord {
                    request_id: c.request_id.clone(),
                    tenant_id: tenant.clone(),
                    model_id: model.clone(),
                    attribution: attribution.clone(),
                    usage: c.usage,
                    cost_usd: cost,
                    estimated: c.estimated,
                    capped: c.capped,
                    at_ms: now_ms,
                },
            )?;
            tx.commit()?;
            let hold = Hold {
                request_id: c.request_id.clone(),
                tenant_id: tenant,
                period: lease.period.clone(),
                model_id: model,
                target_model: terms.target_model.clone(),
                attribution,
                max_output_tokens: crate::ledger::max_output_tokens(
                    None,
                    terms.default_max_output_tokens,
                    terms.max_tokens_cap,
                ),
                hold_usd: c.hold_usd,
                budget_remaining_usd: total.available(),
                rates: terms.rates,
                created_at_ms: now_ms,
                expires_at_ms: lease.expires_at_ms,
                state: HoldState::Committed,
                model_budget_usd: None,
                app_budget_usd: None,
                user_budget_usd: None,
                input_tokens_estimate: 0,
            };
            Ok(CommitApplied::Committed {
                cost,
                capped: c.capped,
                usage: c.usage,
                hold: Box::new(hold),
                totals: total,
                scopes: Vec::new(),
            })
        })
        .await
    }

    async fn balance(
        &self,
        tenant_id: &str,
        period: &str,
        default_budget: Decimal,
    ) -> Result<Balance> {
        let (t, p) = (tenant_id.to_string(), period.to_string());
        self.with(move |conn| {
            let totals = load_row(conn, &t, &p, "ALL")?.unwrap_or_else(|| Totals {
                period: p.clone(),
                budget_usd: default_budget,
                ..Default::default()
            });
            let mut stmt = conn.prepare(&format!(
                "SELECT {BUDGET_COLS}, scope, has_budget FROM budgets WHERE tenant_id = ?1 AND period = ?2 AND scope <> 'ALL'"
            ))?;
            let rows = stmt.query_map(params![t, p], |row| {
                Ok((
                    row.get::<_, String>(8)?,
                    totals_from_row(&p, row)?,
                    row.get::<_, i64>(9)? != 0,
                ))
            })?;
            let mut balance = Balance {
                totals,
                ..Balance::default()
            };
            for r in rows {
                let (key, row, has_budget) = r?;
                let limit = has_budget.then_some(BudgetLimit {
                    budget_usd: row.budget_usd,
                    reserved_usd: row.reserved_usd,
                });
                balance.add_row(&key, row.counters, limit);
            }
            Ok(balance)
        })
        .await
    }

    async fn record_alert(
        &self,
        alert: &AlertRecord,
        payload: &str,
        targets: &[String],
    ) -> Result<bool> {
        let a = alert.clone();
        let payload = payload.to_string();
        let targets = targets.to_vec();
        // One write job = one savepoint of one transaction: the alert and its
        // outbox entries are committed together or not at all.
        self.write(move |conn| {
            let alert_id = a.alert_id();
            let n = conn.execute(
                "INSERT OR IGNORE INTO alerts (tenant_id, period, scope, kind, threshold, alert_id,
                   fired_at, spent_usd, budget_usd, request_id, cost_usd)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    a.tenant_id,
                    a.period,
                    a.scope,
                    a.kind.as_str(),
                    a.threshold_key(),
                    alert_id,
                    a.fired_at_ms,
                    Dec(a.spent_usd),
                    Dec(a.budget_usd),
                    a.request_id,
                    a.cost_usd.map(Dec)
                ],
            )?;
            if n != 1 {
                return Ok(false);
            }
            for target in &targets {
                conn.execute(
                    "INSERT OR IGNORE INTO alert_outbox (alert_id, target, tenant_id, payload, state,
                       attempts, next_attempt_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
                    params![alert_id, target, a.tenant_id, payload, a.fired_at_ms],
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn list_alerts(&self, tenant_id: &str) -> Result<Vec<AlertRecord>> {
        let t = tenant_id.to_string();
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT tenant_id, period, kind, fired_at, spent_usd, budget_usd, request_id, cost_usd,
                   scope, threshold
                 FROM alerts WHERE tenant_id = ?1 ORDER BY fired_at, scope, kind, threshold",
            )?;
            let rows = stmt.query_map(params![t], |r| {
                let kind: String = r.get(2)?;
                let threshold: String = r.get(9)?;
                Ok((
                    kind,
                    threshold,
                    AlertRecord {
                        tenant_id: r.get(0)?,
                        period: r.get(1)?,
                        scope: r.get(8)?,
                        kind: AlertKind::Threshold,
                        threshold: None,
                        fired_at_ms: r.get(3)?,
                        spent_usd: dec(r, 4)?,
                        budget_usd: dec(r, 5)?,
                        request_id: r.get(6)?,
                        cost_usd: opt_dec(r, 7)?,
                    },
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (kind, threshold, mut rec) = row?;
                rec.kind = AlertKind::parse(&kind)
                    .ok_or_else(|| Error::Corrupt(format!("alert kind {kind:?}")))?;
                if !threshold.is_empty() {
                    rec.threshold = Some(threshold.parse().map_err(|e| {
                        Error::Corrupt(format!("alert threshold {threshold:?}: {e}"))
                    })?);
                }
                out.push(rec);
            }
            Ok(out)
        })
        .await
    }

    async fn claim_outbox(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The worker asks every poll; most of the time nothing is due, and a
        // read answers that without a turn of the writer thread.
        let due: bool = self
            .with(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT 1 FROM alert_outbox WHERE state = 'pending' AND next_attempt_at <= ?1 LIMIT 1",
                        params![now_ms],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some())
            })
            .await?;
        if !due {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "UPDATE alert_outbox SET next_attempt_at = ?2
                 WHERE rowid IN (SELECT rowid FROM alert_outbox
                   WHERE state = 'pending' AND next_attempt_at <= ?1
                   ORDER BY next_attempt_at LIMIT ?3)
                 RETURNING {OUTBOX_COLS}"
            ))?;
            let rows = stmt.query_map(params![now_ms, claim_until_ms, limit], outbox_from_row)?;
            outbox_entries(rows)
        })
        .await
    }

    async fn finish_outbox(
        &self,
        alert_id: &str,
        target: &str,
        result: &OutboxResult,
        now_ms: i64,
    ) -> Result<()> {
        let (id, target, result) = (alert_id.to_string(), target.to_string(), result.clone());
        self.write(move |conn| {
            match &result {
                OutboxResult::Delivered => conn.execute(
                    "UPDATE alert_outbox SET state = 'delivered', attempts = attempts + 1,
                       delivered_at = ?3, last_error = NULL
                     WHERE alert_id = ?1 AND target = ?2 AND state = 'pending'",
                    params![id, target, now_ms],
                )?,
                OutboxResult::Retry {
                    next_attempt_ms,
                    error,
                } => conn.execute(
                    "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt_at = ?3,
                       last_error = ?4
                     WHERE alert_id = ?1 AND target = ?2 AND state = 'pending'",
                    params![id, target, next_attempt_ms, error],
                )?,
                OutboxResult::Failed { error } => conn.execute(
                    "UPDATE alert_outbox SET state = 'failed', attempts = attempts + 1,
                       last_error = ?3
                     WHERE alert_id = ?1 AND target = ?2 AND state = 'pending'",
                    params![id, target, error],
                )?,
            };
            Ok(())
        })
        .await
    }

    async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {OUTBOX_COLS} FROM alert_outbox
                 WHERE ?1 IS NULL OR state = ?1
                 ORDER BY created_at DESC, alert_id, target LIMIT ?2"
            ))?;
            let rows = stmt.query_map(
                params![state.map(OutboxState::as_str), limit],
                outbox_from_row,
            )?;
            outbox_entries(rows)
        })
        .await
    }

    async fn outbox_counts(&self) -> Result<(u64, u64)> {
        self.with(|conn| {
            let count = |state: &str| -> Result<u64> {
                let n: i64 = conn.query_row(
                    "SELECT COUNT(*) FROM alert_outbox WHERE state = ?1",
                    params![state],
                    |r| r.get(0),
                )?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            Ok((count("pending")?, count("failed")?))
        })
        .await
    }

    async fn retry_outbox(&self, alert_id: &str, now_ms: i64) -> Result<u64> {
        let id = alert_id.to_string();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE alert_outbox SET state = 'pending', attempts = 0, next_attempt_at = ?2
                 WHERE alert_id = ?1 AND state = 'failed'",
                params![id, now_ms],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn usage(&self, from_ms: Option<i64>, to_ms: Option<i64>) -> Result<Vec<UsageRecord>> {
        self.with(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT request_id, tenant_id, application_id, model_id, cost_center, environment, user_id,
                   input_tokens, output_tokens, cache_read_input_tokens, cache_write_input_tokens,
                   cost_usd, estimated, at, capped
                 FROM usage WHERE at >= ?1 AND at < ?2 ORDER BY at",
            )?;
            let rows = stmt.query_map(
                params![from_ms.unwrap_or(i64::MIN), to_ms.unwrap_or(i64::MAX)],
                |r| {
                    Ok(UsageRecord {
                        capped: r.get::<_, i64>(14)? != 0,
                        request_id: r.get(0)?,
                        tenant_id: r.get(1)?,
                        attribution: Attribution {
                            application_id: r.get(2)?,
                            cost_center: r.get(4)?,
                            environment: r.get(5)?,
                            user_id: r.get(6)?,
                        },
                        model_id: r.get(3)?,
                        usage: Usage {
                            input_tokens: u(r, 7)?,
                            output_tokens: u(r, 8)?,
                            cache_read_input_tokens: u(r, 9)?,
                            cache_write_input_tokens: u(r, 10)?,
                        },
                        cost_usd: dec(r, 11)?,
                        estimated: r.get::<_, i64>(12)? != 0,
                        at_ms: r.get(13)?,
                    })
                },
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

fn price_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelPrice> {
    Ok(ModelPrice {
        model_id: r.get(0)?,
        input: dec(r, 1)?,
        output: dec(r, 2)?,
        cache_read: opt_dec(r, 3)?,
        cache_write: opt_dec(r, 4)?,
    })
}

fn sigv4_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SigV4CredentialRecord> {
    Ok(SigV4CredentialRecord {
        access_key_id: r.get(0)?,
        tenant_id: r.get(1)?,
        application_id: r.get(2)?,
        sealed_secret: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked: r.get::<_, Option<i64>>(5)?.is_some(),
    })
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        key_id: r.get(0)?,
        key_hash: r.get(1)?,
        tenant_id: r.get(2)?,
        application_id: r.get(3)?,
        created_at_ms: r.get(4)?,
        revoked: r.get::<_, Option<i64>>(5)?.is_some(),
        expires_at_ms: r.get(6)?,
        last_used_at_ms: r.get(7)?,
    })
}

#[cfg(test)]
mod synchronous_tests {
    use super::*;

    #[test]
    fn synchronous_mode_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        // Read on the writer connection, the one that commits.
        let read = |s: &SqliteStore| -> i64 {
            s.write_blocking(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?))
                .unwrap()
        };
        let s = SqliteStore::open(&dir.path().join("l.db")).unwrap();
        assert_eq!(read(&s), 2, "FULL by default");
        let s = s.with_synchronous(Synchronous::Normal).unwrap();
        assert_eq!(read(&s), 1);
        let s = s.with_synchronous(Synchronous::Full).unwrap();
        assert_eq!(read(&s), 2);
    }
}

#[cfg(test)]
mod group_commit_tests {
    use super::*;

    type Replies = Arc<Mutex<Vec<(usize, std::result::Result<(), String>)>>>;

    fn job(
        n: usize,
        replies: &Replies,
        f: impl FnOnce(&mut Connection) -> Result<()> + Send + 'static,
    ) -> Box<dyn WriteJob> {
        let replies = replies.clone();
        Box::new(Job {
            f: Some(f),
            out: None,
            reply: Box::new(move |out: Result<()>| {
                replies
                    .lock()
                    .unwrap()
                    .push((n, out.map_err(|e| e.to_string())))
            }),
        })
    }

    fn alias(conn: &Connection, a: &str) -> Result<()> {
        conn.execute(
            "INSERT INTO aliases (alias, model_id) VALUES (?1, 'm')",
            params![a],
        )?;
        Ok(())
    }

    fn aliases(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT alias FROM aliases ORDER BY alias")
            .unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<rusqlite::Result<Vec<String>>>().unwrap()
    }

    fn open() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("l.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        migrate(&mut conn).unwrap();
        (dir, conn)
    }

    #[test]
    fn a_failing_job_rolls_back_only_itself() {
        let (_dir, mut conn) = open();
        let replies = Replies::default();
        let mut batch = vec![
            job(0, &replies, |c| alias(c, "a")),
            job(1, &replies, |c| {
                alias(c, "b")?;
                Err(Error::invalid("no"))
            }),
            job(2, &replies, |c| {
                alias(c, "p")?;
                panic!("job panics")
            }),
            // A job's own savepoint dropped on an early return rolls back too.
            job(3, &replies, |c| {
                let sp = c.savepoint()?;
                alias(&sp, "e")?;
                Ok(())
            }),
            job(4, &replies, |c| alias(c, "c")),
        ];
        assert!(run_batch(&mut conn, &mut batch).is_none());
        for j in batch {
            j.finish(None);
        }
        assert_eq!(aliases(&conn), ["a", "c"]);
        let r = replies.lock().unwrap();
        let ok: Vec<_> = r.iter().map(|(n, out)| (*n, out.is_ok())).collect();
        assert_eq!(
            ok,
            [(0, true), (1, false), (2, false), (3, true), (4, true)]
        );
        assert!(conn.is_autocommit(), "the batch committed");
    }

    #[test]
    fn an_aborted_transaction_fails_the_whole_batch() {
        let (_dir, mut conn) = open();
        let replies = Replies::default();
        let mut batch = vec![
            job(0, &replies, |c| alias(c, "a")),
            // What SQLite does on an I/O error or a full disk.
            job(1, &replies, |c| Ok(c.execute_batch("ROLLBACK")?)),
            job(2, &replies, |c| alias(c, "c")),
        ];
        let failure = run_batch(&mut conn, &mut batch);
        assert!(failure.is_some());
        for j in batch {
            j.finish(failure.as_ref());
        }
        assert!(aliases(&conn).is_empty());
        let r = replies.lock().unwrap();
        assert_eq!(r.len(), 3);
        assert!(r.iter().all(|(_, out)| out.is_err()), "{r:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writes_share_commits_and_reads_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(SqliteStore::open(&dir.path().join("l.db")).unwrap());
        let mut tasks = Vec::new();
        for n in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.put_alias(&format!("a{n:03}"), "m").await.unwrap();
                // Answered after the commit: a read connection sees it.
                assert_eq!(
                    s.get_alias(&format!("a{n:03}")).await.unwrap().as_deref(),
                    Some("m")
                );
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.list_aliases().await.unwrap().len(), 200);
    }
}

#[cfg(test)]
mod v5_tests {
    use super::*;

    #[tokio::test]
    async fn holds_open_at_the_upgrade_keep_uncapped_input() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            apply_migrations(&mut conn, &MIGRATIONS[..4]).unwrap();
            conn.execute(
                "INSERT INTO holds (request_id, tenant_id, period, model_id, target_model,
                   max_output_tokens, hold_usd, budget_remaining_usd, rate_input, rate_output,
                   rate_cache_read, rate_cache_write, created_at, expires_at, state)
                 VALUES ('old', 'acme', 'all', 'm', 'm', 100, '0.1', '0', '3', '15', '0', '0',
                   0, 9999999999999, 'open')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let usage = Usage {
            input_tokens: 5000,
            output_tokens: 10,
            ..Usage::default()
        };
        match store.commit("old", &usage, true, 1).await.unwrap() {
            CommitApplied::Committed { cost, capped, .. } => {
                assert!(!capped);
                assert_eq!(cost, "0.01515".parse::<Decimal>().unwrap());
            }
            other => panic!("{other:?}"),
        }
        let rows = store.usage(None, None).await.unwrap();
        assert!(!rows[0].capped);
    }
}

#[cfg(test)]
mod v6_tests {
    use super::*;

    /// Alerts recorded before scopes keep firing once: they become the
    /// tenant's, a threshold alert takes the tenant's threshold of the time.
    #[tokio::test]
    async fn alerts_of_a_v5_ledger_keep_their_once_per_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            apply_migrations(&mut conn, &MIGRATIONS[..5]).unwrap();
            conn.execute_batch(
                "INSERT INTO tenants (tenant_id, budget_usd, alert_threshold, reset_cycle, active,
                   allowed_models) VALUES ('acme', '10', '0.8', 'monthly', 1, '[]');
                 INSERT INTO alerts (tenant_id, period, kind, fired_at, spent_usd, budget_usd)
                   VALUES ('acme', '2026-11', 'threshold', 5, '8', '10'),
                          ('acme', '2026-11', 'exhausted', 6, '10', '10');",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let t = store.get_tenant("acme").await.unwrap().unwrap();
        assert!(t.alert_thresholds.is_empty());
        assert_eq!(t.thresholds(), vec![Decimal::new(8, 1)]);
        let alerts = store.list_alerts("acme").await.unwrap();
        assert_eq!(alerts.len(), 2);
        assert!(alerts.iter().all(|a| a.scope == SCOPE_TENANT));
        assert_eq!(alerts[0].threshold, Some(Decimal::new(8, 1)));
        assert_eq!(alerts[1].threshold, None);
        let again = AlertRecord {
            fired_at_ms: 7,
            request_id: None,
            cost_usd: None,
            ..alerts[0].clone()
        };
        assert!(!store
            .record_alert(&again, "{}", &["webhook:x".into()])
            .await
            .unwrap());
        assert_eq!(store.outbox_counts().await.unwrap(), (0, 0));
        // Another threshold of the same period is a new alert.
        let other = AlertRecord {
            threshold: Some(Decimal::new(95, 2)),
            ..again
        };
        assert!(store
            .record_alert(&other, "{}", &["webhook:x".into()])
            .await
            .unwrap());
        assert_eq!(store.outbox_counts().await.unwrap(), (1, 0));
    }
}
