//! Wiring: open the store, apply the seed, build the router, run the sweeper and
//! serve until SIGINT/SIGTERM.

use crate::alerts::Alerter;
use crate::api::{router, AppState};
use crate::clock::{Clock, SystemClock};
use crate::config::{ServeArgs, StoreKind};
use crate::error::Result;
use crate::keys;
use crate::metrics::Metrics;
use crate::service::{Service, Settings};
use crate::store::cached::{CachedStore, DEFAULT_TTL};
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

/// Opens the store `serve` was configured with, behind the configuration
/// cache (`--config-cache-ms`).
pub async fn open_store(args: &ServeArgs) -> Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match args.store {
        StoreKind::Sqlite => Arc::new(
            SqliteStore::open(&args.db)?
                .with_synchronous(args.sqlite_synchronous)?
                .with_pricing_region(&args.dynamodb.pricing_region()?),
        ),
        StoreKind::Dynamodb => {
            Arc::new(DynamoStore::connect(&args.dynamodb.store_options()?).await?)
        }
    };
    let ttl = Duration::from_millis(args.config_cache_ms);
    Ok(CachedStore::wrap(store, ttl))
}

/// Like [`build`] on a given store (`opts.db` is then unused).
pub async fn build_with_store(opts: &Options, store: Arc<dyn Store>) -> Result<Sidecar> {
    let service = Arc::new(
        Service::new(
            store,
            opts.clock.clone(),
            opts.settings.clone(),
            Arc::new(Metrics::with_max_label_values(
                opts.settings.metrics_max_label_values,
            )),
            Alerter::new(opts.webhooks.clone()).with_format(opts.settings.webhook_format),
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
    let router = router(AppState {
        service: service.clone(),
        admin_token: Arc::from(opts.admin_token.as_str()),
    });
    Ok(Sidecar { router, service })
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

/// `tollgate-sidecar serve`.
pub async fn serve(args: ServeArgs) -> Result<()> {
    let opts = Options {
        db: args.db.clone(),
        seed: args.seed.clone(),
        settings: Settings {
            hold_ttl_secs: args.hold_ttl_secs,
            default_max_output_tokens: args.default_max_output_tokens,
            high_cost_threshold_usd: args.high_cost_threshold_usd,
            sealing_key: crate::seal::SealingKey::from_env()?,
            metrics_max_label_values: args.metrics_max_label_values,
            webhook_format: args.webhook_format.into(),
            emf_output: args.emf_output.as_deref().map(crate::emf::EmfTarget::parse),
            emf_namespace: args.emf_namespace.clone(),
            pricing_region: args.dynamodb.pricing_region()?,
            leases: crate::leases::LeaseSettings {
                enabled: !args.no_leases,
                ttl_secs: args.lease_ttl_secs.max(1),
                max_share: args
                    .lease_max_share
                    .clamp(rust_decimal::Decimal::ZERO, rust_decimal::Decimal::ONE),
            },
        },
        webhooks: args.webhooks.clone(),
        admin_token: admin_token_from_env(),
        clock: Arc::new(SystemClock),
    };
    let sidecar = build_with_store(&opts, open_store(&args).await?).await?;
    match args.store {
        StoreKind::Sqlite => tracing::info!(db = %opts.db.display(), "ledger open (sqlite)"),
        StoreKind::Dynamodb => tracing::info!(
            table_prefix = %args.dynamodb.dynamodb_table_prefix,
            "ledger open (dynamodb)"
        ),
    }
    tracing::info!(region = %opts.settings.pricing_region, "pricing region");
    let sweeper = spawn_sweeper(
        sidecar.service.clone(),
        Duration::from_secs(args.sweep_interval_secs.max(1)),
    );
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on {addr}");
    axum::serve(listener, sidecar.router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    sweeper.abort();
    tracing::info!("stopped");
    Ok(())
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
