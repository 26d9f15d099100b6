//! Command line and environment (clap).

use crate::pricing::parse_decimal_arg;
use clap::{Args, Parser, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate-sidecar",
    version,
    about = "Tollgate budget sidecar: per-tenant Bedrock budgets, holds, commits and cost attribution"
)]
pub struct Cli {
    /// Base URL of the sidecar, for the admin commands (also accepted after
    /// the command, where it wins).
    #[arg(long = "url", id = "leading_url", value_name = "URL")]
    leading_url: Option<String>,
    /// Admin token, for the admin commands (also accepted after the command).
    #[arg(long = "admin-token", id = "leading_admin_token", value_name = "TOKEN")]
    leading_admin_token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments; `--url`/`--admin-token` may stand before
    /// the command (`tollgate-sidecar --url … tenants list`) as well as after it.
    pub fn parse_args() -> Self {
        Self::parse_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    pub fn parse_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        if cli.leading_url.is_none() && cli.leading_admin_token.is_none() {
            return Ok(cli);
        }
        if cli.command.client_mut().is_none() {
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                "--url and --admin-token are for the admin commands (tenants, keys, usage, …)",
            ));
        }
        // A value given after the command is nearer to it and wins; one given
        // before only replaces the default or the environment.
        let after = |id: &str| {
            matches.subcommand().is_some_and(|(_, sub)| {
                sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
            })
        };
        let (url_after, token_after) = (after("url"), after("admin_token"));
        let Some(client) = cli.command.client_mut() else {
            return Ok(cli);
        };
        if let Some(url) = cli.leading_url.take().filter(|_| !url_after) {
            client.url = url;
        }
        if let Some(token) = cli.leading_admin_token.take().filter(|_| !token_after) {
            client.admin_token = Some(token);
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
// Parsed once at startup: the size of `Serve`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the sidecar (data plane, admin API, metrics).
    Serve(ServeArgs),
    /// Manage tenants.
    Tenants(TenantsArgs),
    /// Issue and revoke tenant bearer keys.
    Keys(KeysArgs),
    /// Issue and revoke tenant SigV4 credentials (access key id + secret).
    Sigv4(KeysArgs),
    /// Manage the price table (USD per 1M tokens).
    Prices(PricesArgs),
    /// Map (tenant, application, model) to an application inference profile ARN.
    Profiles(ProfilesArgs),
    /// Manage friendly model aliases.
    Aliases(AliasesArgs),
    /// Inspect and requeue alert deliveries (the outbox).
    Alerts(AlertsArgs),
    /// Usage and cost report.
    Usage(UsageArgs),
    /// Compare the ledger's spend of a month with Cost Explorer's, per value of
    /// a cost-allocation tag of the profiles (default tollgate:tenant), and say
    /// the usual causes of a gap.
    Reconcile(ReconcileArgs),
    /// Check a deployment and say what to fix: the sidecar's health, store and
    /// clock, prices, aliases and profile ARNs, and (with --envoy-admin) the
    /// filter's live Envoy configuration and counters. Exits non-zero when a
    /// check fails.
    Doctor(DoctorArgs),
    /// Manage the DynamoDB tables of the shared store.
    Dynamodb(DynamodbArgs),
    /// Re-seal every stored SigV4 secret under the current key (after rotating
    /// TOLLGATE_SECRET_KEY).
    ///
    /// Opens each secret with TOLLGATE_SECRET_KEY or a key in
    /// TOLLGATE_SECRET_KEY_PREVIOUS (comma-separated) and seals it again with
    /// TOLLGATE_SECRET_KEY. Works on the store directly, with `serve`'s store
    /// flags, while sidecars run. Idempotent; prints the counts and exits
    /// non-zero when any secret could not be re-sealed.
    Rewrap(RewrapArgs),
    /// Print the OpenAPI document generated from the code, as served at
    /// `GET /openapi.json` (regenerates `sidecar/openapi.json`).
    #[command(hide = true)]
    Openapi,
}

impl Command {
    /// Where the admin API is, for the commands that call it.
    fn client_mut(&mut self) -> Option<&mut ClientArgs> {
        match self {
            Command::Tenants(a) => Some(&mut a.client),
            Command::Keys(a) | Command::Sigv4(a) => Some(&mut a.client),
            Command::Prices(a) => Some(&mut a.client),
            Command::Profiles(a) => Some(&mut a.client),
            Command::Aliases(a) => Some(&mut a.client),
            Command::Alerts(a) => Some(&mut a.client),
            Command::Usage(a) => Some(&mut a.client),
            Command::Reconcile(a) => Some(&mut a.client),
            Command::Doctor(a) => Some(&mut a.client),
            Command::Serve(_) | Command::Dynamodb(_) | Command::Rewrap(_) | Command::Openapi => {
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebhookFormatArg {
    Json,
    Slack,
}

impl From<WebhookFormatArg> for crate::alerts::WebhookFormat {
    fn from(f: WebhookFormatArg) -> Self {
        match f {
            WebhookFormatArg::Json => Self::Json,
            WebhookFormatArg::Slack => Self::Slack,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on. The data plane needs the filter token, the admin
    /// API the admin token, `/metrics` the metrics or admin token; `/healthz`
    /// and `/openapi.json` are open.
    #[arg(long, env = "TOLLGATE_LISTEN", default_value = "127.0.0.1:9190")]
    pub listen: SocketAddr,
    /// File of accepted filter tokens (`x-tollgate-filter-token` on every
    /// data-plane call): one per line, blank lines and `#` comments ignored,
    /// re-read when it changes (rotation: add the new token, roll Envoy to it,
    /// remove the old one). `TOLLGATE_FILTER_TOKEN` adds one more token.
    #[arg(long, env = "TOLLGATE_FILTER_TOKEN_FILE")]
    pub filter_token_file: Option<PathBuf>,
    /// Run the data plane without a filter token: anyone who can reach the port
    /// can reserve, commit and release for any tenant. Only for a sidecar that
    /// nothing but its own Envoy can reach.
    #[arg(long, env = "TOLLGATE_INSECURE_OPEN_DATA_PLANE")]
    pub insecure_open_data_plane: bool,
    /// Client credential types the sidecar honours (comma-separated): bearer,
    /// sigv4, jwt, trusted_header. `jwt` and `trusted_header` name a tenant the
    /// sidecar cannot verify: enable them only when the gateway in front really
    /// checks them (jwt_authn, or a trusted hop setting x-tenant-id).
    #[arg(
        long,
        env = "TOLLGATE_ACCEPT_CREDENTIALS",
        value_enum,
        value_delimiter = ',',
        default_value = "bearer,sigv4"
    )]
    pub accept_credentials: Vec<crate::dataplane_auth::CredentialKind>,
    /// Token (besides the admin token) accepted as `Authorization: Bearer` on
    /// `GET /metrics`.
    #[arg(long, env = "TOLLGATE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    #[command(flatten)]
    pub ledger: StoreArgs,
    /// JSON seed file applied (upserted) at startup.
    #[arg(long, env = "TOLLGATE_SEED")]
    pub seed: Option<PathBuf>,
    /// Seconds an uncommitted hold lives before the sweeper releases it.
    #[arg(long, env = "TOLLGATE_HOLD_TTL_SECS", default_value_t = 600)]
    pub hold_ttl_secs: u64,
    /// Never grant budget leases: every request is reserved one by one.
    #[arg(long, env = "TOLLGATE_NO_LEASES")]
    pub no_leases: bool,
    /// Seconds a budget lease lives without a renewal before the sweeper
    /// returns it (gateways renew every second).
    #[arg(long, env = "TOLLGATE_LEASE_TTL_SECS", default_value_t = 30)]
    pub lease_ttl_secs: u64,
    /// Largest share (0–1) of a tenant's available budget one lease grant takes.
    #[arg(long, env = "TOLLGATE_LEASE_MAX_SHARE", default_value = "0.25", value_parser = parse_decimal_arg)]
    pub lease_max_share: rust_decimal::Decimal,
    /// Output tokens a hold assumes when the request states no limit.
    #[arg(
        long,
        env = "TOLLGATE_DEFAULT_MAX_OUTPUT_TOKENS",
        default_value_t = 4096
    )]
    pub default_max_output_tokens: u64,
    /// One invocation costing more than this (USD) fires a `high_cost` alert.
    #[arg(long, env = "TOLLGATE_HIGH_COST_THRESHOLD_USD", default_value = "10", value_parser = parse_decimal_arg)]
    pub high_cost_threshold_usd: Decimal,
    /// Webhook URL that receives alerts as JSON POSTs (repeatable; env: comma-separated).
    #[arg(long = "webhook", env = "TOLLGATE_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Webhook body: `json` (the alert itself) or `slack` (`{"text": "…"}`).
    #[arg(
        long,
        env = "TOLLGATE_WEBHOOK_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub webhook_format: WebhookFormatArg,
    /// Secret that signs webhook deliveries: header `X-Tollgate-Signature:
    /// t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">` (prefer the env var: a
    /// flag shows in `ps`). Unset: deliveries are unsigned.
    #[arg(long, env = "TOLLGATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// SNS topic ARN that receives every alert (repeatable; env: comma-separated).
    /// Endpoint and credentials from the AWS SDK chain (`AWS_ENDPOINT_URL_SNS`).
    #[arg(
        long = "alert-sns-topic-arn",
        env = "TOLLGATE_ALERT_SNS_TOPIC_ARNS",
        value_delimiter = ','
    )]
    pub alert_sns_topic_arns: Vec<String>,
    /// Attempts per alert delivery before the outbox marks it failed.
    #[arg(long, env = "TOLLGATE_ALERT_MAX_ATTEMPTS", default_value_t = 20)]
    pub alert_max_attempts: u32,
    /// Delay after a failed delivery attempt (ms); doubles per attempt.
    #[arg(long, env = "TOLLGATE_ALERT_RETRY_BASE_MS", default_value_t = 1000)]
    pub alert_retry_base_ms: u64,
    /// Longest delay between delivery attempts (ms).
    #[arg(long, env = "TOLLGATE_ALERT_RETRY_MAX_MS", default_value_t = 300_000)]
    pub alert_retry_max_ms: u64,
    /// How often the outbox worker looks for due deliveries (ms).
    #[arg(long, env = "TOLLGATE_ALERT_POLL_MS", default_value_t = 1000)]
    pub alert_poll_ms: u64,
    /// Distinct values per metrics label (tenant, model, application, cost_center,
    /// environment) before new ones are reported as `other`.
    #[arg(long, env = "TOLLGATE_METRICS_MAX_LABEL_VALUES", default_value_t = crate::metrics::DEFAULT_MAX_LABEL_VALUES)]
    pub metrics_max_label_values: usize,
    /// Write one CloudWatch EMF JSON line per committed invocation to this file
    /// (appended) or to `stdout`.
    #[arg(long, env = "TOLLGATE_EMF_OUTPUT")]
    pub emf_output: Option<String>,
    /// CloudWatch namespace of the EMF metrics.
    #[arg(long, env = "TOLLGATE_EMF_NAMESPACE", default_value = crate::emf::DEFAULT_NAMESPACE)]
    pub emf_namespace: String,
    /// Seconds between sweeps for expired holds.
    #[arg(long, env = "TOLLGATE_SWEEP_INTERVAL_SECS", default_value_t = 5)]
    pub sweep_interval_secs: u64,
    /// Log format.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Milliseconds configuration reads (tenants, keys, SigV4 credentials,
    /// prices, aliases, profiles) are served from memory; a change made by
    /// another sidecar on the same ledger is seen at most this late. 0 disables.
    #[arg(long, env = "TOLLGATE_CONFIG_CACHE_MS", default_value_t = 1000)]
    pub config_cache_ms: u64,
}

/// Which ledger store to open and how: shared by `serve` and the commands that
/// work on the store directly (`rewrap`), so they take the same flags.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Ledger store: sqlite (embedded, default) or dynamodb (shared by a fleet;
    /// configured by the AWS SDK's standard chain, e.g. AWS_REGION and
    /// AWS_ENDPOINT_URL_DYNAMODB).
    #[arg(long, env = "TOLLGATE_STORE", value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    /// SQLite ledger file (created if missing).
    #[arg(long, env = "TOLLGATE_DB", default_value = ".tollgate/ledger.db")]
    pub db: PathBuf,
    /// SQLite durability: `full` syncs every ledger write to disk (survives power
    /// loss); `normal` syncs at WAL checkpoints (survives a crash of the sidecar,
    /// may lose the last writes on power loss) and is about 3× faster.
    #[arg(
        long,
        env = "TOLLGATE_SQLITE_SYNCHRONOUS",
        value_enum,
        default_value = "full"
    )]
    pub sqlite_synchronous: crate::store::sqlite::Synchronous,
    #[command(flatten)]
    pub dynamodb: DynamodbOptions,
}

/// `tollgate-sidecar rewrap`.
#[derive(Debug, Clone, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    pub ledger: StoreArgs,
    /// Only count what would be re-sealed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log format (the audit event and warnings go to stderr).
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Dynamodb,
}

/// Options of the DynamoDB store.
#[derive(Debug, Clone, Args)]
pub struct DynamodbOptions {
    /// Prefix of every DynamoDB table name (e.g. `prod-`).
    #[arg(long, env = "TOLLGATE_DYNAMODB_TABLE_PREFIX", default_value = "")]
    pub dynamodb_table_prefix: String,
    /// Price table region this sidecar charges with (both stores keep one
    /// price table per region; default `global`). `--dynamodb-pricing-region`
    /// and `TOLLGATE_DYNAMODB_PRICING_REGION` are accepted as older names.
    #[arg(
        long = "pricing-region",
        visible_alias = "dynamodb-pricing-region",
        env = "TOLLGATE_PRICING_REGION",
        value_parser = parse_region
    )]
    pub pricing_region: Option<String>,
}

fn parse_region(s: &str) -> Result<String, String> {
    crate::pricing::validate_region(s)?;
    Ok(s.to_string())
}

impl DynamodbOptions {
    /// `--pricing-region`, else `TOLLGATE_DYNAMODB_PRICING_REGION`, else `global`.
    pub fn pricing_region(&self) -> crate::error::Result<String> {
        let region = match &self.pricing_region {
            Some(r) => r.clone(),
            None => match std::env::var("TOLLGATE_DYNAMODB_PRICING_REGION") {
                Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
                _ => crate::pricing::DEFAULT_REGION.to_string(),
            },
        };
        crate::pricing::validate_region(&region).map_err(crate::error::Error::invalid)?;
        Ok(region)
    }

    #[cfg(feature = "dynamodb")]
    pub fn store_options(&self) -> crate::error::Result<crate::store::dynamodb::DynamoOptions> {
        Ok(crate::store::dynamodb::DynamoOptions {
            table_prefix: self.dynamodb_table_prefix.clone(),
            pricing_region: self.pricing_region()?,
        })
    }
}

#[derive(Debug, Args)]
pub struct DynamodbArgs {
    #[command(flatten)]
    pub options: DynamodbOptions,
    #[command(subcommand)]
    pub command: DynamodbCommand,
}

#[derive(Debug, Subcommand)]
pub enum DynamodbCommand {
    /// Create the tables that are missing (PAY_PER_REQUEST) and wait until they
    /// are ACTIVE. Idempotent.
    Init,
}

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the sidecar.
    #[arg(
        long,
        env = "TOLLGATE_URL",
        default_value = "http://127.0.0.1:9190",
        global = true
    )]
    pub url: String,
    /// Admin token (normally from the environment).
    #[arg(
        long = "admin-token",
        env = "TOLLGATE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: TenantsCommand,
}

// Parsed once per CLI run: `Set`'s size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create or replace a tenant's configuration.
    Set {
        tenant: String,
        /// Budget per period, USD.
        #[arg(long, value_parser = parse_decimal_arg)]
        budget: Decimal,
        /// Fraction of the budget (0–1) that fires a threshold alert, once per
        /// period and budget (tenant, each model budget); repeatable or
        /// comma-separated, e.g. `--alert-threshold 0.5,0.8,0.95`. Default 0.8.
        #[arg(long = "alert-threshold", value_delimiter = ',', value_parser = parse_decimal_arg)]
        alert_thresholds: Vec<Decimal>,
        /// When the budget starts over.
        #[arg(long, value_enum, default_value_t = ResetCycleArg::Monthly)]
        reset_cycle: ResetCycleArg,
        /// Allowed model (alias or ID; repeatable). None: every priced model.
        #[arg(long = "allowed-model")]
        allowed_models: Vec<String>,
        #[arg(long)]
        default_model: Option<String>,
        /// Cap on output tokens per request.
        #[arg(long)]
        max_tokens_cap: Option<u64>,
        /// Requests per UTC minute, across every sidecar sharing the ledger.
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per UTC minute (input estimate + max output, corrected at
        /// commit), across every sidecar sharing the ledger.
        #[arg(long)]
        tpm: Option<u64>,
        /// Tokens per minute on one model, as MODEL=N (alias or ID; repeatable).
        #[arg(long = "model-tpm", value_parser = parse_model_tpm)]
        model_tpm: Vec<(String, u64)>,
        /// Create the tenant disabled.
        #[arg(long)]
        inactive: bool,
        /// Budget per period for one model inside the tenant budget, as
        /// MODEL=USD (alias or ID; repeatable).
        #[arg(long = "model-budget", value_parser = parse_scoped_budget)]
        model_budgets: Vec<(String, Decimal)>,
        /// Budget per period for one application inside the tenant budget, as
        /// APP=USD (the key's bound application, else `x-application-id`;
        /// repeatable).
        #[arg(long = "app-budget", value_parser = parse_scoped_budget)]
        app_budgets: Vec<(String, Decimal)>,
        /// Budget per period for one end user inside the tenant budget, as
        /// USER=USD (`x-user-id` / `requestMetadata.user_id`; repeatable).
        #[arg(long = "user-budget", value_parser = parse_scoped_budget)]
        user_budgets: Vec<(String, Decimal)>,
        /// Budget per period of every user not given one by --user-budget.
        #[arg(long, value_parser = parse_decimal_arg)]
        default_user_budget: Option<Decimal>,
    },
    /// Show a tenant's configuration, live balance and alerts.
    Get {
        tenant: String,
        /// Show another period's balance (e.g. 2026-10).
        #[arg(long)]
        period: Option<String>,
    },
    /// List tenants.
    List,
    /// Delete a tenant: configuration and profiles go, keys and SigV4
    /// credentials are revoked, usage history stays. Refused while budget is
    /// reserved for it (deactivate it first, then retry).
    Delete { tenant: String },
}

/// `MODEL=N` of `tenants set --model-tpm`.
fn parse_model_tpm(s: &str) -> Result<(String, u64), String> {
    let (model, n) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected MODEL=TOKENS, got {s:?}"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("expected MODEL=TOKENS with a whole number, got {s:?}"))?;
    if model.is_empty() || n == 0 {
        return Err(format!("expected MODEL=TOKENS (at least 1), got {s:?}"));
    }
    Ok((model.to_string(), n))
}

/// `KEY=VALUE` of `profiles create --tag`.
fn parse_tag(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    if k.is_empty() {
        return Err(format!("expected KEY=VALUE, got {s:?}"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// `tollgate-sidecar reconcile`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The month, YYYY-MM (UTC, as Cost Explorer's months).
    #[arg(long)]
    pub month: String,
    /// The cost-allocation tag to group by.
    #[arg(long, default_value = "tollgate:tenant")]
    pub tag_key: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

/// `ID=USD` of `tenants set --model-budget`, `--app-budget`, `--user-budget`
/// (split at the last `=`: an ID may hold one, an amount cannot).
fn parse_scoped_budget(s: &str) -> Result<(String, Decimal), String> {
    let (id, usd) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected ID=USD, got {s:?}"))?;
    if id.is_empty() {
        return Err(format!("expected ID=USD, got {s:?}"));
    }
    Ok((id.to_string(), parse_decimal_arg(usd)?))
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a credential to a tenant — a bearer key (`keys issue`) or a SigV4
    /// access key id and secret (`sigv4 issue`) — printed once, stored hashed
    /// (keys) or sealed with TOLLGATE_SECRET_KEY (SigV4 secrets).
    Issue {
        tenant: String,
        #[arg(long)]
        application: Option<String>,
        /// Bearer keys: refuse the key after this long (`90s`, `45m`, `12h`, `30d`).
        #[arg(long, value_parser = parse_duration_secs, conflicts_with = "expires_at")]
        expires_in: Option<u64>,
        /// Bearer keys: refuse the key from this instant (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List a tenant's credentials: ids, applications, creation dates,
    /// whether revoked; for keys also expiry and last use; never a key or a secret.
    List { tenant: String },
    /// Revoke a credential by its id (`key_id`, or the SigV4 access key id).
    /// Per-request checks refuse it at once; gateways admitting from a lease
    /// stop at the lease's next renewal (about a second).
    Revoke { tenant: String, key_id: String },
}

#[derive(Debug, Args)]
pub struct PricesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Price table region (default: the sidecar's `--pricing-region`).
    #[arg(long, global = true, value_parser = parse_region)]
    pub region: Option<String>,
    #[command(subcommand)]
    pub command: PricesCommand,
}

#[derive(Debug, Subcommand)]
pub enum PricesCommand {
    /// Set a model's prices (USD per 1M tokens).
    Set {
        model: String,
        #[arg(long, value_parser = parse_decimal_arg)]
        input: Decimal,
        #[arg(long, value_parser = parse_decimal_arg)]
        output: Decimal,
        #[arg(long, value_parser = parse_decimal_arg)]
        cache_read: Option<Decimal>,
        #[arg(long, value_parser = parse_decimal_arg)]
        cache_write: Option<Decimal>,
    },
    /// Import prices from a JSON file: a seed file (`{"pricing": [...]}`; other
    /// seed sections are ignored) or a bare array of `{"model_id", "input",
    /// "output", "cache_read", "cache_write"}` entries. Decimals are read exactly.
    /// With --from-aws instead: the on-demand prices of the models in use (the
    /// price table, mapped profiles, aliases) from the AWS Price List API
    /// (pricing:GetProducts), shown as a diff against the table and written
    /// unless --dry-run.
    Import {
        #[arg(required_unless_present = "from_aws", conflicts_with = "from_aws")]
        file: Option<PathBuf>,
        /// Read the prices from the AWS Price List API.
        #[arg(long)]
        from_aws: bool,
        /// Only show what would change (with --from-aws).
        #[arg(long)]
        dry_run: bool,
        /// The Bedrock Region whose prices to read (with --from-aws; default:
        /// AWS_REGION).
        #[arg(long)]
        aws_region: Option<String>,
        /// Where the Price List API is called (it answers in us-east-1,
        /// eu-central-1 and ap-south-1).
        #[arg(long, default_value = "us-east-1")]
        pricing_api_region: String,
    },
    /// List the price table.
    List,
    /// Remove a model's price: its requests are refused from then on.
    Delete { model: String },
}

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: ProfilesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Map (tenant, [application], model) to an application inference profile ARN.
    Map {
        tenant: String,
        model: String,
        arn: String,
        #[arg(long)]
        application: Option<String>,
    },
    /// List a tenant's mappings.
    List { tenant: String },
    /// Create the tenant's application inference profile in AWS (copying the
    /// model, or a geo-prefixed system profile such as us.anthropic…), tagged
    /// tollgate:tenant, tollgate:application, tollgate:model, cost-center,
    /// environment and --tag's, and map it. An existing profile with the same
    /// Tollgate tags is reused. Runs in the sidecar, with its AWS credentials.
    Create {
        tenant: String,
        model: String,
        #[arg(long)]
        application: Option<String>,
        /// More tags, as KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// The cost-center tag.
        #[arg(long)]
        cost_center: Option<String>,
        /// The environment tag.
        #[arg(long)]
        environment: Option<String>,
    },
    /// Map every application inference profile tagged tollgate:tenant
    /// (e.g. to rebuild the mappings of a new ledger).
    Sync {
        /// Only this tenant's profiles.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete the mapped application inference profile in AWS and unmap it.
    Delete {
        tenant: String,
        model: String,
        #[arg(long)]
        application: Option<String>,
    },
    /// Remove a mapping: the tenant's requests then use its tenant-wide
    /// mapping (for an application's), or the model itself.
    Unmap {
        tenant: String,
        model: String,
        #[arg(long)]
        application: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct AliasesArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AliasesCommand,
}

#[derive(Debug, Subcommand)]
pub enum AliasesCommand {
    /// Point a friendly name at a model ID.
    Set { alias: String, model_id: String },
    /// List aliases.
    List,
    /// Remove an alias.
    Delete { alias: String },
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AlertsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alert deliveries, newest first.
    Outbox {
        /// Only `pending`, `delivered` or `failed` ones.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Requeue an alert's failed deliveries.
    Retry { alert_id: String },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Envoy's admin address (e.g. http://127.0.0.1:9901), to check the
    /// filter's configuration (`/config_dump`) and counters (`/stats`).
    #[arg(long, env = "TOLLGATE_ENVOY_ADMIN")]
    pub envoy_admin: Option<String>,
    /// The Bedrock Region the gateway calls, for the profile ARN check.
    /// Default: the region of Envoy's aws_request_signing filter, else the
    /// sidecar's pricing region unless that is `global`.
    #[arg(long)]
    pub region: Option<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Dimensions to group by, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "tenant")]
    pub group_by: Vec<GroupBy>,
    /// RFC 3339 start (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 end (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = UsageFormat::Json)]
    pub format: UsageFormat,
}

/// `tenants set --reset-cycle` (checked here, before any call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResetCycleArg {
    Monthly,
    Weekly,
    Daily,
    None,
}

/// `usage --group-by` dimensions, as `GET /v1/usage` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum GroupBy {
    Tenant,
    Application,
    Model,
    CostCenter,
    Environment,
    User,
}

/// `usage --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsageFormat {
    Json,
    Csv,
}

/// `reconcile --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A table and the causes, for people.
    Table,
    Json,
}

/// The name a value has on the command line (and in the API).
pub fn arg_name(v: &impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_from_args(std::iter::once("tollgate-sidecar").chain(args.iter().copied()))
    }

    #[test]
    fn alert_thresholds_repeat_or_take_a_list() {
        let cli = parse(&[
            "tenants",
            "set",
            "acme",
            "--budget",
            "1",
            "--alert-threshold",
            "0.5,0.8",
            "--alert-threshold",
            "0.95",
        ])
        .unwrap();
        let Command::Tenants(t) = cli.command else {
            panic!("not tenants")
        };
        let TenantsCommand::Set {
            alert_thresholds, ..
        } = t.command
        else {
            panic!("not set")
        };
        let want: Vec<Decimal> = ["0.5", "0.8", "0.95"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(alert_thresholds, want);
        let e = parse(&[
            "tenants",
            "set",
            "a",
            "--budget",
            "1",
            "--alert-threshold",
            "x",
        ])
        .expect_err("refused");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn usage_arguments_are_checked_before_any_call() {
        let cli = parse(&[
            "usage",
            "--group-by",
            "tenant,cost_center",
            "--format",
            "csv",
        ])
        .unwrap();
        let Command::Usage(u) = cli.command else {
            panic!("not usage")
        };
        assert_eq!(u.group_by, vec![GroupBy::Tenant, GroupBy::CostCenter]);
        assert_eq!(arg_name(&u.format), "csv");
        for bad in [
            &["usage", "--group-by", "planet"][..],
            &["usage", "--format", "xml"],
            &[
                "tenants",
                "set",
                "acme",
                "--budget",
                "1",
                "--reset-cycle",
                "hourly",
            ],
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{bad:?}");
        }
        // `--url` goes anywhere after the command (also after a nested one).
        for args in [
            &["usage", "--url", "http://x:1"][..],
            &["usage", "--format", "csv", "--url", "http://x:1"],
        ] {
            let Command::Usage(u) = parse(args).unwrap().command else {
                panic!("not usage")
            };
            assert_eq!(u.client.url, "http://x:1");
        }
        // …and before it; after it wins.
        let url_of = |args: &[&str]| match parse(args).unwrap().command {
            Command::Tenants(t) => (t.client.url, t.client.admin_token),
            _ => panic!("not tenants"),
        };
        assert_eq!(
            url_of(&[
                "--url",
                "http://a:1",
                "--admin-token",
                "t",
                "tenants",
                "list"
            ]),
            ("http://a:1".into(), Some("t".into()))
        );
        assert_eq!(
            url_of(&[
                "--url",
                "http://a:1",
                "tenants",
                "list",
                "--url",
                "http://b:2"
            ])
            .0,
            "http://b:2"
        );
        assert_eq!(
            url_of(&[
                "--url",
                "http://a:1",
                "tenants",
                "--url",
                "http://b:2",
                "list"
            ])
            .0,
            "http://b:2"
        );
        let e = parse(&["--url", "http://a:1", "openapi"]).expect_err("not an admin command");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn aws_commands_check_their_arguments_before_any_call() {
        let Command::Profiles(p) = parse(&[
            "profiles",
            "create",
            "acme",
            "claude-3-haiku",
            "--tag",
            "team=a=b",
            "--tag",
            "x=",
            "--cost-center",
            "cc",
        ])
        .unwrap()
        .command
        else {
            panic!("not profiles")
        };
        let ProfilesCommand::Create {
            tags, cost_center, ..
        } = p.command
        else {
            panic!("not create")
        };
        // The first `=` splits; an empty value is a tag value AWS accepts.
        assert_eq!(
            tags,
            vec![("team".into(), "a=b".into()), ("x".into(), String::new())]
        );
        assert_eq!(cost_center.as_deref(), Some("cc"));
        assert!(parse(&["profiles", "create", "acme", "m", "--tag", "novalue"]).is_err());
        assert!(parse(&["profiles", "create", "acme", "m", "--tag", "=v"]).is_err());
        // `prices import` takes a file or --from-aws, not both; --dry-run is for --from-aws.
        assert!(parse(&["prices", "import"]).is_err());
        assert!(parse(&["prices", "import", "f.json", "--from-aws"]).is_err());
        let Command::Prices(p) = parse(&["prices", "import", "--from-aws", "--dry-run"])
            .unwrap()
            .command
        else {
            panic!("not prices")
        };
        assert!(matches!(
            p.command,
            PricesCommand::Import { file: None, from_aws: true, dry_run: true, ref pricing_api_region, .. }
                if pricing_api_region == "us-east-1"
        ));
        let Command::Reconcile(r) = parse(&["reconcile", "--month", "2026-10"]).unwrap().command
        else {
            panic!("not reconcile")
        };
        assert_eq!(
            (r.tag_key.as_str(), r.format),
            ("tollgate:tenant", ReportFormat::Table)
        );
        assert!(parse(&["reconcile"]).is_err());
    }

    #[test]
    fn group_by_names_are_the_apis() {
        let names: Vec<String> = GroupBy::value_variants().iter().map(arg_name).collect();
        assert_eq!(names, crate::api::GROUP_KEYS);
    }
}

/// `90s`, `45m`, `12h`, `30d` (or plain seconds) → seconds.
fn parse_duration_secs(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let (num, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{v:?}: expected a number and a unit, e.g. 30d"))?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{v:?}: the unit must be s, m, h or d")),
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("{v:?} is too long"))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration_secs;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("45m"), Ok(2_700));
        assert_eq!(parse_duration_secs("12h"), Ok(43_200));
        assert_eq!(parse_duration_secs("30d"), Ok(2_592_000));
        assert!(parse_duration_secs("3w").is_err());
        assert!(parse_duration_secs("d").is_err());
    }
}
