//! Wiring: open the store, apply the seed, build the router, run the sweeper and
//! serve until SIGINT/SIGTERM.

use crate::alerts::Alerter;
use crate::api::{router, AppState};
use crate::clock::{Clock, SystemClock};
use crate::config::{ServeArgs, StoreArgs, StoreKind};
use crate::dataplane_auth::{AcceptedCredentials, DataPlaneAuth, FilterTokens, FILTER_TOKEN_ENV};
use crate::error::{Error, Result};
use crate::keys;
use crate::metrics::Metrics;
use crate::service::{Service, Settings};
use crate::store::cached::{CachedStore, DEFAULT_TTL};
#[cfg(feature = "dynamodb")]
use crate::store::dynamodb::DynamoStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use axum::Router;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Everything needed to build a sidecar (tests construct this directly).
#[derive(Clone)]
pub struct Options {
    pub db: PathBuf,
    pub seed: Option<PathBuf>,
    pub settings: Settings,
    pub webhooks: Vec<String>,
    pub admin_token: String,
    /// Filter tokens and credential types of the data plane.
    pub data_plane: Arc<DataPlaneAuth>,
    /// Accepted on `/metrics` besides the admin token.
    pub metrics_token: Option<String>,
    pub clock: Arc<dyn Clock>,
}

pub struct Sidecar {
    pub router: Router,
    pub service: Arc<Service>,
}

/// Opens the SQLite ledger at `opts.db`, applies the seed, and builds the routes.
/// Configuration reads are cached for `store::cached::DEFAULT_TTL`.
pub async fn build(opts: &Options) -> Result<Sidecar> {
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&opts.db)?.with_pricing_region(&opts.settings.pricing_region));
    build_with_store(opts, CachedStore::wrap(store, DEFAULT_TTL)).await
}

/// Opens the ledger store the flags name (`--store`, `--db`, …), uncached.
pub async fn open_ledger(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    Ok(match args.store {
        StoreKind::Sqlite => Arc::new(
            SqliteStore::open(&args.db)?
                .with_synchronous(args.sqlite_synchronous)?
                .with_pricing_region(&args.dynamodb.pricing_region()?),
        ),
        #[cfg(feature = "dynamodb")]
        StoreKind::Dynamodb => {
            Arc::new(DynamoStore::connect(&args.dynamodb.store_options()?).await?)
        }
        #[cfg(not(feature = "dynamodb"))]
        StoreKind::Dynamodb => return Err(Error::invalid(crate::store::NO_DYNAMODB)),
    })
}

/// Opens the store `serve` was configured with, behind the configuration
/// cache (`--config-cache-ms`).
pub async fn open_store(args: &ServeArgs) -> Result<Arc<dyn Store>> {
    let store = open_ledger(&args.ledger).await?;
    let ttl = Duration::from_millis(args.config_cache_ms);
    Ok(CachedStore::wrap(store, ttl))
}

/// Like [`build`] on a given store (`opts.db` is then unused).
pub async fn build_with_store(opts: &Options, store: Arc<dyn Store>) -> Result<Sidecar> {
    let mut settings = opts.settings.clone();
    settings.leases.accepted = opts.data_plane.accepted.clone();
    let service = Arc::new(
        Service::new(
            store,
            opts.clock.clone(),
            settings,
            Arc::new(Metrics::with_max_label_values(
                opts.settings.metrics_max_label_values,
            )),
            Alerter::new(opts.webhooks.clone())
                .with_format(opts.settings.webhook_format)
                .with_secret(opts.settings.webhook_secret.clone())
                .with_sns_topics(opts.settings.sns_topics.clone())
                .with_outbox(opts.settings.outbox),
        )
        .with_emf(match &opts.settings.emf_output {
            Some(target) => Some(crate::emf::EmfWriter::start(
                target,
                &opts.settings.emf_namespace,
            )?),
            None => None,
        }),
    );
    if let Some(seed) = &opts.seed {
        let s = crate::seed::apply_file(&service, seed).await?;
        tracing::info!(
            seed = %seed.display(),
            aliases = s.aliases,
            prices = s.prices,
            tenants = s.tenants,
            "seed applied"
        );
    }
    let admin_token: Arc<str> = Arc::from(opts.admin_token.as_str());
    let router = router(AppState {
        service: service.clone(),
        admin_token: admin_token.clone(),
        data_plane: opts.data_plane.clone(),
        metrics_token: opts.metrics_token.as_deref().map(Arc::from),
    })
    .merge(crate::ui::router(crate::ui::UiState::new(
        service.clone(),
        admin_token,
    )));
    let router = crate::layers::wrap(router);
    Ok(Sidecar { router, service })
}

/// Delivers the alert outbox (retries, and what a restart left pending) until
/// the process ends.
pub fn spawn_outbox_worker(service: Arc<Service>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::alerts::run_worker(
        service.alerter().clone(),
        service.store.clone(),
        service.clock.clone(),
        service.metrics.clone(),
    ))
}

/// Releases expired holds every `interval` until the process ends.
pub fn spawn_sweeper(service: Arc<Service>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = service.sweep().await {
                tracing::error!(error = %e, "sweep failed");
            }
        }
    })
}

fn admin_token_from_env() -> String {
    match std::env::var("TOLLGATE_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = keys::generate_admin_token();
            tracing::warn!(
                "TOLLGATE_ADMIN_TOKEN is not set; generated admin token for this run: {t}"
            );
            t
        }
    }
}

/// The data plane's protection from `serve`'s flags and environment: filter
/// tokens (or none with `--insecure-open-data-plane`) and credential types.
pub fn data_plane_auth(args: &ServeArgs, admin_token: &str) -> Result<DataPlaneAuth> {
    let accepted = AcceptedCredentials::new(&args.accept_credentials);
    let fixed = std::env::var(FILTER_TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty());
    if args.filter_token_file.is_none() && fixed.is_none() {
        if !args.insecure_open_data_plane {
            return Err(Error::invalid(format!(
                "no filter token configured: set --filter-token-file PATH (TOLLGATE_FILTER_TOKEN_FILE) \
                 or {FILTER_TOKEN_ENV}, and give Envoy the same token in its {FILTER_TOKEN_ENV}; \
                 or pass --insecure-open-data-plane to let anyone who reaches this port \
                 reserve, commit and release for any tenant"
            )));
        }
        tracing::warn!(
            "INSECURE: --insecure-open-data-plane: /v1/reserve, /v1/commit, /v1/release and \
             /v1/leases/* need no filter token; anyone who can reach this port can spend, \
             charge and free any tenant's budget"
        );
        return Ok(DataPlaneAuth::open(accepted));
    }
    let tokens = FilterTokens::new(
        args.filter_token_file.as_deref(),
        fixed.as_deref(),
        Some(admin_token),
    )
    .map_err(Error::invalid)?;
    if args.insecure_open_data_plane {
        tracing::warn!("--insecure-open-data-plane ignored: filter tokens are configured");
    }
    tracing::info!(
        tokens = tokens.count(),
        file = ?args.filter_token_file,
        accept_credentials = %accepted.describe(),
        "data plane requires x-tollgate-filter-token"
    );
    Ok(DataPlaneAuth::new(tokens, accepted))
}

/// `tollgate-sidecar serve`.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let admin_token = admin_token_from_env();
    let data_plane = Arc::new(data_plane_auth(&args, &admin_token)?);
    if let Some(m) = &args.metrics_token {
        if m.trim().len() < crate::dataplane_auth::MIN_TOKEN_LEN {
            return Err(Error::invalid(format!(
                "--metrics-token must be at least {} characters",
                crate::dataplane_auth::MIN_TOKEN_LEN
            )));
        }
    }
    let sealing = crate::seal::Keyring::from_env()?;
    match &sealing {
        Some(k) => tracing::info!(
            current_key_id = k.current_id(),
            previous_key_ids = ?k.previous_ids(),
            "SigV4 secrets sealed with key id {}",
            k.current_id()
        ),
        None => tracing::info!(
            "{} is not set: SigV4 credentials cannot be issued or verified",
            crate::seal::SECRET_KEY_ENV
        ),
    }
    let opts = Options {
        db: args.ledger.db.clone(),
        seed: args.seed.clone(),
        settings: Settings {
            hold_ttl_secs: args.hold_ttl_secs,
            default_max_output_tokens: args.default_max_output_tokens,
            high_cost_threshold_usd: args.high_cost_threshold_usd,
            sealing,
            metrics_max_label_values: args.metrics_max_label_values,
            webhook_format: args.webhook_format.into(),
            webhook_secret: args
                .webhook_secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(crate::alerts::WebhookSecret::new),
            sns_topics: sns_topics(&args)?,
            outbox: crate::alerts::OutboxSettings {
                max_attempts: args.alert_max_attempts.max(1),
                base_backoff: Duration::from_millis(args.alert_retry_base_ms.max(1)),
                max_backoff: Duration::from_millis(args.alert_retry_max_ms.max(1)),
                poll: Duration::from_millis(args.alert_poll_ms.max(10)),
            },
            emf_output: args.emf_output.as_deref().map(crate::emf::EmfTarget::parse),
            emf_namespace: args.emf_namespace.clone(),
            pricing_region: args.ledger.dynamodb.pricing_region()?,
            leases: crate::leases::LeaseSettings {
                enabled: !args.no_leases,
                ttl_secs: args.lease_ttl_secs.max(1),
                max_share: args
                    .lease_max_share
                    .clamp(rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ONE),
                // Set from the data plane's by `build_with_store`.
                accepted: AcceptedCredentials::all(),
            },
        },
        webhooks: args.webhooks.clone(),
        admin_token,
        data_plane,
        metrics_token: args.metrics_token.as_deref().map(|t| t.trim().to_string()),
        clock: Arc::new(SystemClock),
    };
    let sidecar = build_with_store(&opts, open_store(&args).await?).await?;
    match args.ledger.store {
        StoreKind::Sqlite => tracing::info!(db = %opts.db.display(), "ledger open (sqlite)"),
        StoreKind::Dynamodb => tracing::info!(
            table_prefix = %args.ledger.dynamodb.dynamodb_table_prefix,
            "ledger open (dynamodb)"
        ),
    }
    tracing::info!(region = %opts.settings.pricing_region, "pricing region");
    let sweeper = spawn_sweeper(
        sidecar.service.clone(),
        Duration::from_secs(args.sweep_interval_secs.max(1)),
    );
    let outbox = spawn_outbox_worker(sidecar.service.clone());
    tracing::info!(
        targets = sidecar.service.alerter().targets().len(),
        signed = opts.settings.webhook_secret.is_some(),
        "alert outbox worker started"
    );
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    axum::serve(listener, sidecar.router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    sweeper.abort();
    sidecar.service.flush_key_use().await;
    outbox.abort();
    if let Some(emf) = sidecar.service.emf() {
        if !emf.flush(Duration::from_secs(5)) {
            tracing::warn!("EMF output not flushed within 5 s; its last lines may be lost");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// `--alert-sns-topic-arn`, checked (and refused in a build without SNS).
fn sns_topics(args: &ServeArgs) -> Result<Vec<String>> {
    for t in &args.alert_sns_topic_arns {
        if !t.starts_with("arn:") || t.split(':').count() != 6 {
            return Err(Error::invalid(format!(
                "--alert-sns-topic-arn {t:?} is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
            )));
        }
    }
    if !args.alert_sns_topic_arns.is_empty() && !cfg!(feature = "sns") {
        return Err(Error::invalid(crate::alerts::NO_SNS));
    }
    Ok(args.alert_sns_topic_arns.clone())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command};

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let args = ["tollgate-sidecar", "serve"].iter().chain(extra.iter());
        match Cli::parse_from_args(args).map(|c| c.command) {
            Ok(Command::Serve(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sns_topics_are_checked_and_need_the_feature() {
        let good = "arn:aws:sns:us-east-1:123456789012:alerts";
        assert_eq!(sns_topics(&serve_args(&[])).unwrap(), Vec::<String>::new());
        let bad = sns_topics(&serve_args(&["--alert-sns-topic-arn", "alerts"]));
        assert!(
            bad.as_ref()
                .is_err_and(|e| e.to_string().contains("is not a topic ARN")),
            "{bad:?}"
        );
        let two = serve_args(&[
            "--alert-sns-topic-arn",
            good,
            "--alert-sns-topic-arn",
            "arn:aws:sns:eu-west-1:123456789012:other",
        ]);
        let got = sns_topics(&two);
        if cfg!(feature = "sns") {
            assert_eq!(got.unwrap().len(), 2);
        } else {
            assert!(
                got.as_ref()
                    .is_err_and(|e| e.to_string().contains(crate::alerts::NO_SNS)),
                "{got:?}"
            );
        }
    }
}
