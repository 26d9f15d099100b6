//! Command-line client for the admin API (`tollgate-sidecar tenants|keys|prices|…`).

use crate::config::{
    arg_name, AlertsCommand, AliasesCommand, ClientArgs, Command, KeysArgs, KeysCommand,
    PricesCommand, ProfilesCommand, TenantsCommand,
};
use crate::error::{Error, Result};
use reqwest::Method;
use serde_json::{json, Value};

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What stays as is in a path segment or query value: RFC 3986 unreserved, and
/// `:` and `@` (model IDs contain `:`; keep them readable).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

/// Percent-encodes one path segment or query value.
pub(crate) fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// The body of `PUT /v1/pricing/{model}`: exact decimals as strings.
fn price_body(p: &crate::pricing::ModelPrice) -> Value {
    json!({
        "input": p.input.to_string(),
        "output": p.output.to_string(),
        "cache_read": p.cache_read.map(|d| d.to_string()),
        "cache_write": p.cache_write.map(|d| d.to_string()),
    })
}

impl Client {
    /// Writes one price of an import (`query`: `?region=…` or empty); a
    /// failure names the model.
    pub(crate) async fn put_price(
        &self,
        p: &crate::pricing::ModelPrice,
        query: &str,
    ) -> Result<()> {
        self.call(
            Method::PUT,
            &format!("/v1/pricing/{}{query}", seg(&p.model_id)),
            Some(price_body(p)),
        )
        .await
        .map(|_| ())
        .map_err(|e| Error::invalid(format!("{}: {e}", p.model_id)))
    }

    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let token = args
            .admin_token
            .clone()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::invalid("set TOLLGATE_ADMIN_TOKEN (or --admin-token) to use the admin API")
            })?;
        Ok(Self {
            http: reqwest::Client::new(),
            base: args.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String> {
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
                .unwrap_or(text);
            return Err(Error::invalid(format!("{status}: {msg}")));
        }
        Ok(text)
    }

    async fn print(&self, method: Method, path: &str, body: Option<Value>) -> Result<()> {
        let text = self.call(method, path, body).await?;
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => println!("{}", serde_json::to_string_pretty(&v)?),
            Err(_) if text.is_empty() => {}
            Err(_) => print!("{text}"),
        }
        Ok(())
    }
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve(_) => Err(Error::Internal("serve is not a client command".into())),
        // Works on the store, like `dynamodb init`; `main` sets up its logging.
        Command::Rewrap(a) => crate::rewrap::command(a).await,
        Command::Doctor(a) => crate::doctor::command(a).await,
        Command::Openapi => {
            print!("{}", crate::openapi::json());
            Ok(())
        }
        Command::Dynamodb(a) => match a.command {
            #[cfg(feature = "dynamodb")]
            crate::config::DynamodbCommand::Init => {
                crate::store::dynamodb::init_command(&a.options.store_options()?).await
            }
            #[cfg(not(feature = "dynamodb"))]
            crate::config::DynamodbCommand::Init => Err(Error::invalid(crate::store::NO_DYNAMODB)),
        },
        Command::Tenants(a) => {
            let c = Client::new(&a.client)?;
            match a.command {
                TenantsCommand::Set {
                    tenant,
                    budget,
                    alert_thresholds,
                    reset_cycle,
                    allowed_models,
                    default_model,
                    max_tokens_cap,
                    rpm,
                    tpm,
                    inactive,
                    model_budgets,
                    model_tpm,
                    app_budgets,
                    user_budgets,
                    default_user_budget,
                } => {
                    let model_tpm: serde_json::Map<String, Value> =
                        model_tpm.into_iter().map(|(m, n)| (m, json!(n))).collect();
                    // Exact decimals go as strings.
                    let budgets = |list: Vec<(String, rust_decimal::Decimal)>| -> serde_json::Map<String, Value> {
                        list.into_iter()
                            .map(|(id, b)| (id, Value::String(b.to_string())))
                            .collect()
                    };
                    let mut body = json!({
                        "budget_usd": budget.to_string(),
                        "reset_cycle": arg_name(&reset_cycle),
                        "active": !inactive,
                        "allowed_models": allowed_models,
                        "default_model": default_model,
                        "max_tokens_cap": max_tokens_cap,
                        "rate_limit_rpm": rpm,
                        "rate_limit_tpm": tpm,
                        "model_budgets": budgets(model_budgets),
                        "model_rate_limit_tpm": model_tpm,
                        "application_budgets": budgets(app_budgets),
                        "user_budgets": budgets(user_budgets),
                        "default_user_budget_usd": default_user_budget.map(|b| b.to_string()),
                    });
                    // Without the flag the sidecar's default applies (0.8).
                    if !alert_thresholds.is_empty() {
                        body["alert_thresholds"] = alert_thresholds
                            .iter()
                            .map(|t| Value::String(t.to_string()))
                            .collect();
                    }
                    c.print(
                        Method::PUT,
                        &format!("/v1/tenants/{}", seg(&tenant)),
                        Some(body),
                    )
                    .await
                }
                TenantsCommand::Get { tenant, period } => {
                    let q = period
                        .map(|p| format!("?period={}", seg(&p)))
                        .unwrap_or_default();
                    c.print(
                        Method::GET,
                        &format!("/v1/tenants/{}{q}", seg(&tenant)),
                        None,
                    )
                    .await
                }
                TenantsCommand::List => c.print(Method::GET, "/v1/tenants", None).await,
                TenantsCommand::Delete { tenant } => {
                    c.call(
                        Method::DELETE,
                        &format!("/v1/tenants/{}", seg(&tenant)),
                        None,
                    )
                    .await?;
                    println!("deleted {tenant} (its usage history is kept)");
                    Ok(())
                }
            }
        }
        Command::Sigv4(a) => credentials(&a, "sigv4-credentials", "secret access key").await,
        Command::Keys(a) => credentials(&a, "keys", "key").await,
        Command::Prices(a) => {
            let c = Client::new(&a.client)?;
            let q = a
                .region
                .as_deref()
                .map(|r| format!("?region={}", seg(r)))
                .unwrap_or_default();
            match a.command {
                PricesCommand::Set {
                    model,
                    input,
                    output,
                    cache_read,
                    cache_write,
                } => {
                    let body = price_body(&crate::pricing::ModelPrice {
                        model_id: model.clone(),
                        input,
                        output,
                        cache_read,
                        cache_write,
                    });
                    c.print(
                        Method::PUT,
                        &format!("/v1/pricing/{}{q}", seg(&model)),
                        Some(body),
                    )
                    .await
                }
                PricesCommand::Import {
                    from_aws: true,
                    dry_run,
                    aws_region,
                    pricing_api_region,
                    ..
                } => {
                    crate::aws::price_import::command(
                        &c,
                        a.region.as_deref(),
                        aws_region,
                        &pricing_api_region,
                        dry_run,
                    )
                    .await
                }
                PricesCommand::Import {
                    file,
                    dry_run,
                    aws_region,
                    ..
                } => {
                    if dry_run || aws_region.is_some() {
                        // A file import writes at once; a dry run is --from-aws's.
                        return Err(Error::invalid(
                            "--dry-run and --aws-region go with --from-aws",
                        ));
                    }
                    let Some(file) = file else {
                        return Err(Error::invalid("prices import: give a FILE or --from-aws"));
                    };
                    let text = std::fs::read_to_string(&file).map_err(|e| {
                        Error::invalid(format!("cannot read {}: {e}", file.display()))
                    })?;
                    let prices = crate::seed::parse_price_file(&text)?;
                    for p in &prices {
                        c.put_price(&p.to_price()?, &q).await?;
                    }
                    println!("imported {} prices", prices.len());
                    Ok(())
                }
                PricesCommand::List => c.print(Method::GET, &format!("/v1/pricing{q}"), None).await,
                PricesCommand::Delete { model } => {
                    c.call(
                        Method::DELETE,
                        &format!("/v1/pricing/{}{q}", seg(&model)),
                        None,
                    )
                    .await?;
                    println!("deleted the price of {model}");
                    Ok(())
                }
            }
        }
        Command::Profiles(a) => {
            let c = Client::new(&a.client)?;
            match a.command {
                ProfilesCommand::Map {
                    tenant,
                    model,
                    arn,
                    application,
                } => {
                    let body = json!({ "application_id": application, "model": model, "arn": arn });
                    c.print(
                        Method::PUT,
                        &format!("/v1/tenants/{}/profiles", seg(&tenant)),
                        Some(body),
                    )
                    .await
                }
                ProfilesCommand::Create {
                    tenant,
                    model,
                    application,
                    tags,
                    cost_center,
                    environment,
                } => {
                    let tags: serde_json::Map<String, Value> = tags
                        .into_iter()
                        .map(|(k, v)| (k, Value::String(v)))
                        .collect();
                    let body = json!({
                        "model": model,
                        "application_id": application,
                        "cost_center": cost_center,
                        "environment": environment,
                        "tags": tags,
                    });
                    c.print(
                        Method::POST,
                        &format!("/v1/tenants/{}/inference-profiles", seg(&tenant)),
                        Some(body),
                    )
                    .await
                }
                ProfilesCommand::Sync { tenant } => {
                    c.print(
                        Method::POST,
                        "/v1/inference-profiles/sync",
                        Some(json!({ "tenant_id": tenant })),
                    )
                    .await
                }
                ProfilesCommand::Delete {
                    tenant,
                    model,
                    application,
                } => {
                    let q = application_query(application.as_deref());
                    c.print(
                        Method::DELETE,
                        &format!(
                            "/v1/tenants/{}/inference-profiles/{}{q}",
                            seg(&tenant),
                            seg(&model)
                        ),
                        None,
                    )
                    .await
                }
                ProfilesCommand::List { tenant } => {
                    c.print(
                        Method::GET,
                        &format!("/v1/tenants/{}/profiles", seg(&tenant)),
                        None,
                    )
                    .await
                }
                ProfilesCommand::Unmap {
                    tenant,
                    model,
                    application,
                } => {
                    let q = application_query(application.as_deref());
                    c.call(
                        Method::DELETE,
                        &format!("/v1/tenants/{}/profiles/{}{q}", seg(&tenant), seg(&model)),
                        None,
                    )
                    .await?;
                    println!("unmapped {model} for tenant {tenant}");
                    Ok(())
                }
            }
        }
        Command::Aliases(a) => {
            let c = Client::new(&a.client)?;
            match a.command {
                AliasesCommand::Set { alias, model_id } => {
                    c.print(
                        Method::PUT,
                        &format!("/v1/aliases/{}", seg(&alias)),
                        Some(json!({ "model_id": model_id })),
                    )
                    .await
                }
                AliasesCommand::List => c.print(Method::GET, "/v1/aliases", None).await,
                AliasesCommand::Delete { alias } => {
                    c.call(
                        Method::DELETE,
                        &format!("/v1/aliases/{}", seg(&alias)),
                        None,
                    )
                    .await?;
                    println!("deleted alias {alias}");
                    Ok(())
                }
            }
        }
        Command::Alerts(a) => {
            let c = Client::new(&a.client)?;
            match a.command {
                AlertsCommand::Outbox { state, limit } => {
                    let mut path = format!("/v1/alerts/outbox?limit={limit}");
                    if let Some(st) = state {
                        path.push_str(&format!("&state={}", seg(&st)));
                    }
                    c.print(Method::GET, &path, None).await
                }
                AlertsCommand::Retry { alert_id } => {
                    c.print(
                        Method::POST,
                        &format!("/v1/alerts/outbox/{}/retry", seg(&alert_id)),
                        None,
                    )
                    .await
                }
            }
        }
        Command::Reconcile(a) => {
            let c = Client::new(&a.client)?;
            crate::aws::reconcile::command(&c, &a).await
        }
        Command::Usage(a) => {
            let c = Client::new(&a.client)?;
            let mut q = vec![
                format!(
                    "group_by={}",
                    seg(&a
                        .group_by
                        .iter()
                        .map(arg_name)
                        .collect::<Vec<_>>()
                        .join(","))
                ),
                format!("format={}", arg_name(&a.format)),
            ];
            if let Some(f) = &a.from {
                q.push(format!("from={}", seg(f)));
            }
            if let Some(t) = &a.to {
                q.push(format!("to={}", seg(t)));
            }
            if let Some(t) = &a.tenant {
                q.push(format!("tenant={}", seg(t)));
            }
            c.print(Method::GET, &format!("/v1/usage?{}", q.join("&")), None)
                .await
        }
    }
}

/// `keys` and `sigv4`: issue (the secret is printed once) and revoke.
async fn credentials(a: &KeysArgs, collection: &str, secret_name: &str) -> Result<()> {
    let c = Client::new(&a.client)?;
    match &a.command {
        KeysCommand::Issue {
            tenant,
            application,
            expires_in,
            expires_at,
        } => {
            let mut body = json!({ "application_id": application });
            if let Some(secs) = expires_in {
                body["expires_in_secs"] = json!(secs);
            }
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            c.print(
                Method::POST,
                &format!("/v1/tenants/{}/{collection}", seg(tenant)),
                Some(body),
            )
            .await?;
            eprintln!("Store the {secret_name} now: it is not shown again.");
            Ok(())
        }
        KeysCommand::List { tenant } => {
            c.print(
                Method::GET,
                &format!("/v1/tenants/{}/{collection}", seg(tenant)),
                None,
            )
            .await
        }
        KeysCommand::Revoke { tenant, key_id } => {
            c.call(
                Method::DELETE,
                &format!("/v1/tenants/{}/{collection}/{}", seg(tenant), seg(key_id)),
                None,
            )
            .await?;
            println!("revoked {key_id}");
            Ok(())
        }
    }
}

/// `?application=A` for the per-application profile routes (empty without one).
fn application_query(application: Option<&str>) -> String {
    application
        .map(|a| format!("?application={}", seg(a)))
        .unwrap_or_default()
}
