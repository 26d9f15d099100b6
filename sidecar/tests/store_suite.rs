//! One behavioural suite for every [`Store`], run against SQLite (a temp file) and
//! against the DynamoDB store on dynalite (`tests/node_modules/.bin/dynalite`,
//! installed by `cargo xtask setup`; override with `DYNALITE_BIN`).
//!
//! Each case gets a fresh store: a new SQLite file, or a new table prefix on the
//! one dynalite process the DynamoDB test starts (and kills when it ends).

#[cfg(feature = "dynamodb")]
#[path = "common/dynalite.rs"]
mod dynalite;

#[cfg(feature = "dynamodb")]
use dynalite::Dynalite;
use rust_decimal::Decimal;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tollgate_sidecar::error::Error;
use tollgate_sidecar::ledger::{AlertKind, LeaseSizing, ResetCycle};
use tollgate_sidecar::pricing::{ModelPrice, Rates};
#[cfg(feature = "dynamodb")]
use tollgate_sidecar::store::dynamodb::{DynamoOptions, DynamoStore};
use tollgate_sidecar::store::sqlite::SqliteStore;
use tollgate_sidecar::store::*;
use tollgate_wire::api::{Attribution, LeaseTerms, Usage};

const SONNET: &str = "anthropic.claude-3-sonnet-20240229-v1:0";
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const PERIOD: &str = "2026-11";
const T0: i64 = 1_795_000_000_000;

type Case = fn(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|s| Box::pin($name(s))) as Case)),*]
    };
}

fn all_cases() -> Vec<(&'static str, Case)> {
    cases![
        tenants_prices_aliases_profiles,
        keys,
        sigv4_credentials,
        sigv4_sealed_secrets_are_listed_and_replaced_conditionally,
        rewrap_reseals_every_secret_under_the_current_key,
        reserve_admits_and_denies_at_the_exact_boundary,
        reserve_is_idempotent,
        commit_is_idempotent,
        release_gives_the_hold_back,
        late_commit_after_expiry_debits_once,
        commit_racing_the_sweeper_debits_once,
        balance_sums_by_model,
        alerts_fire_once_per_tenant_period_kind,
        alerts_are_keyed_by_scope_and_threshold,
        outbox_entries_are_claimed_retried_failed_and_delivered,
        usage_records,
        concurrent_reserves_never_overspend,
        model_budgets_cap_holds_inside_the_tenant_budget,
        model_budget_rows_follow_config_and_history,
        concurrent_capped_reserves_never_overspend_the_model,
        prices_are_kept_per_region,
        concurrent_reserves_and_commits_keep_the_ledger_exact,
        commit_caps_usage_at_what_the_request_could_use,
        lease_grant_fits_or_is_refused_and_is_exactly_min_near_the_cap,
        lease_renewal_returns_tops_up_and_replays,
        lease_of_an_ended_period_is_closed_and_given_back,
        leased_commits_move_the_hold_and_are_idempotent,
        late_leased_commit_after_expiry_charges_once,
        tenant_deletion_waits_for_holds_and_keeps_history,
        rate_windows_count_exactly_under_concurrency,
        nested_budget_config_round_trips,
        each_nested_cap_holds_under_200_way_concurrency,
        nested_levels_stay_exact_through_commits_releases_and_expiry,
    ]
}

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn rates() -> Rates {
    Rates {
        input: d("3"),
        output: d("15"),
        cache_read: d("0.3"),
        cache_write: d("3.75"),
    }
}

fn hold(id: &str, tenant: &str, model: &str, hold_usd: &str) -> Hold {
    Hold {
        request_id: id.to_string(),
        tenant_id: tenant.to_string(),
        period: PERIOD.to_string(),
        model_id: model.to_string(),
        target_model: model.to_string(),
        attribution: Attribution {
            application_id: Some("app".into()),
            cost_center: Some("cc-1".into()),
            environment: None,
            user_id: Some("u-1".into()),
        },
        max_output_tokens: 1000,
        hold_usd: d(hold_usd),
        budget_remaining_usd: Decimal::ZERO,
        rates: rates(),
        created_at_ms: T0,
        expires_at_ms: T0 + 600_000,
        state: HoldState::Open,
        model_budget_usd: None,
        app_budget_usd: None,
        user_budget_usd: None,
        input_tokens_estimate: 1000,
    }
}

/// A hold admitted under a model budget.
fn capped(id: &str, tenant: &str, model: &str, hold_usd: &str, model_budget: &str) -> Hold {
    Hold {
        model_budget_usd: Some(d(model_budget)),
        input_tokens_estimate: 1000,
        ..hold(id, tenant, model, hold_usd)
    }
}

/// `spent + reserved + available = budget` on every model row with a budget.
fn assert_model_identity(b: &Balance) {
    for (m, l) in &b.model_limits {
        let spent = b.by_model[m].spent_usd;
        assert_eq!(
            spent + l.reserved_usd + l.available(spent),
            l.budget_usd,
            "{m}: {l:?}"
        );
        assert!(l.reserved_usd >= Decimal::ZERO, "{m}: {l:?}");
    }
}

/// 1000 in + 500 out at 3/15 per 1M = 0.0105.
fn usage() -> Usage {
    Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_input_tokens: 0,
        cache_write_input_tokens: 0,
    }
}

fn tenant(id: &str, budget: &str) -> TenantConfig {
    TenantConfig {
        tenant_id: id.to_string(),
        budget_usd: d(budget),
        alert_threshold: d("0.5"),
        alert_thresholds: vec![d("0.5"), d("0.8"), d("0.95")],
        reset_cycle: ResetCycle::Monthly,
        active: true,
        allowed_models: vec![SONNET.into(), "claude-3-haiku".into()],
        default_model: Some(SONNET.into()),
        max_tokens_cap: Some(4000),
        rate_limit_rpm: Some(100),
        rate_limit_tpm: Some(50_000),
        model_budgets: Default::default(),
        model_rate_limit_tpm: Default::default(),
        application_budgets: Default::default(),
        user_budgets: Default::default(),
        default_user_budget_usd: None,
    }
}

async fn bal(s: &Arc<dyn Store>, t: &str) -> Balance {
    s.balance(t, PERIOD, d("999")).await.expect("balance")
}

/// The ledger identity every change must keep.
fn assert_identity(b: &Balance) {
    let t = &b.totals;
    assert_eq!(
        t.counters.spent_usd + t.reserved_usd + t.available(),
        t.budget_usd,
        "{t:?}"
    );
}

async fn reserve(s: &Arc<dyn Store>, h: &Hold, budget: &str) -> ReserveOutcome {
    s.reserve(h, d(budget)).await.expect("reserve")
}

// ---------------------------------------------------------------------------
// cases

async fn tenants_prices_aliases_profiles(s: Arc<dyn Store>) {
    assert_eq!(s.get_tenant("acme").await.unwrap(), None);
    let mut acme = tenant("acme", "10");
    s.put_tenant(&acme, PERIOD).await.unwrap();
    s.put_tenant(&tenant("beta", "5"), PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(acme.rate_limit_tpm, Some(50_000));
    // Model budgets round-trip exactly, and can be cleared.
    acme.model_budgets = [
        (SONNET.to_string(), d("0.50")),
        (HAIKU.to_string(), d("1e-3")),
    ]
    .into_iter()
    .collect();
    s.put_tenant(&acme, PERIOD).await.unwrap();
    let got = s.get_tenant("acme").await.unwrap().unwrap();
    assert_eq!(got, acme);
    assert_eq!(got.model_budgets[HAIKU], d("0.001"));
    acme.model_budgets.clear();
    s.put_tenant(&acme, PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("acme").await.unwrap(), Some(acme.clone()));
    let listed = s.list_tenants().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids, ["acme", "beta"]);
    assert_eq!(listed[0], acme);
    assert_eq!(listed[1].rate_limit_tpm, Some(50_000));

    // A budget change moves the current period's budget (and available) along.
    assert_eq!(
        reserve(&s, &hold("r1", "acme", SONNET, "1"), "10").await,
        ReserveOutcome::Admitted
    );
    acme.budget_usd = d("20");
    acme.active = false;
    acme.allowed_models.clear();
    acme.default_model = None;
    acme.max_tokens_cap = None;
    acme.rate_limit_rpm = None;
    acme.rate_limit_tpm = None;
    s.put_tenant(&acme, PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(s.list_tenants().await.unwrap()[0], acme);
    // The TPM limit can come back, and changes alone.
    acme.rate_limit_tpm = Some(7_500);
    s.put_tenant(&acme, PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("acme").await.unwrap(), Some(acme.clone()));
    assert_eq!(s.list_tenants().await.unwrap()[0], acme);
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.budget_usd, d("20"));
    assert_eq!(b.totals.available(), d("19"));
    assert_identity(&b);

    let sonnet = ModelPrice {
        model_id: SONNET.into(),
        input: d("3.00"),
        output: d("15.00"),
        cache_read: None,
        cache_write: None,
    };
    let haiku = ModelPrice {
        model_id: HAIKU.into(),
        input: d("0.25"),
        output: d("1.25"),
        cache_read: Some(d("0.03")),
        cache_write: Some(d("0.30")),
    };
    s.put_price(&sonnet).await.unwrap();
    s.put_price(&haiku).await.unwrap();
    assert_eq!(s.get_price(SONNET).await.unwrap(), Some(sonnet.clone()));
    assert_eq!(s.get_price("nope").await.unwrap(), None);
    let mut sonnet2 = sonnet.clone();
    sonnet2.output = d("16.5");
    s.put_price(&sonnet2).await.unwrap();
    assert_eq!(s.list_prices().await.unwrap(), vec![haiku, sonnet2.clone()]);

    s.put_alias("claude-3-sonnet", SONNET).await.unwrap();
    s.put_alias("fast", HAIKU).await.unwrap();
    s.put_alias("fast", SONNET).await.unwrap();
    assert_eq!(s.get_alias("fast").await.unwrap().as_deref(), Some(SONNET));
    assert_eq!(s.get_alias("slow").await.unwrap(), None);
    let aliases = s.list_aliases().await.unwrap();
    assert_eq!(aliases.len(), 2);
    assert_eq!(aliases["claude-3-sonnet"], SONNET);

    let p = |app: Option<&str>, model: &str, arn: &str| Profile {
        tenant_id: "acme".into(),
        application_id: app.map(String::from),
        model_id: model.into(),
        arn: arn.into(),
    };
    s.put_profile(&p(Some("web"), SONNET, "arn:1"))
        .await
        .unwrap();
    s.put_profile(&p(None, SONNET, "arn:2")).await.unwrap();
    s.put_profile(&p(None, SONNET, "arn:3")).await.unwrap();
    assert_eq!(
        s.list_profiles("acme").await.unwrap(),
        vec![p(None, SONNET, "arn:3"), p(Some("web"), SONNET, "arn:1")]
    );
    assert!(s.list_profiles("beta").await.unwrap().is_empty());

    // Deletes: each removes exactly its entry and says whether it was there.
    assert!(s.delete_profile("acme", Some("web"), SONNET).await.unwrap());
    assert!(!s.delete_profile("acme", Some("web"), SONNET).await.unwrap());
    assert!(!s.delete_profile("beta", None, SONNET).await.unwrap());
    assert_eq!(
        s.list_profiles("acme").await.unwrap(),
        vec![p(None, SONNET, "arn:3")]
    );
    assert!(s.delete_alias("fast").await.unwrap());
    assert!(!s.delete_alias("fast").await.unwrap());
    assert_eq!(s.get_alias("fast").await.unwrap(), None);
    assert_eq!(s.list_aliases().await.unwrap().len(), 1);
    assert!(s.delete_price_in(s.pricing_region(), HAIKU).await.unwrap());
    assert!(!s.delete_price_in(s.pricing_region(), HAIKU).await.unwrap());
    assert!(!s.delete_price_in("eu-west-9", SONNET).await.unwrap());
    assert_eq!(s.get_price(HAIKU).await.unwrap(), None);
    assert_eq!(s.list_prices().await.unwrap(), vec![sonnet2]);
}

async fn keys(s: Arc<dyn Store>) {
    let k = |id: &str, hash: &str, tenant: &str, at: i64| ApiKeyRecord {
        key_id: id.into(),
        tenant_id: tenant.into(),
        application_id: (id == "k2").then(|| "app".to_string()),
        key_hash: hash.into(),
        created_at_ms: at,
        revoked: false,
        expires_at_ms: (id == "k2").then_some(1_000),
        last_used_at_ms: None,
    };
    assert!(s.insert_key(&k("k1", "h1", "acme", 1)).await.unwrap());
    assert!(s.insert_key(&k("k2", "h2", "acme", 2)).await.unwrap());
    assert!(s.insert_key(&k("k3", "h3", "beta", 3)).await.unwrap());
    assert!(
        !s.insert_key(&k("k9", "h1", "beta", 4)).await.unwrap(),
        "a known hash is refused"
    );
    assert_eq!(
        s.find_key("h2").await.unwrap(),
        Some(k("k2", "h2", "acme", 2))
    );
    assert_eq!(s.find_key("nope").await.unwrap(), None);
    assert_eq!(
        s.list_keys("acme").await.unwrap(),
        vec![k("k1", "h1", "acme", 1), k("k2", "h2", "acme", 2)]
    );
    assert!(
        !s.revoke_key("beta", "k1", 10).await.unwrap(),
        "another tenant's key"
    );
    assert!(!s.revoke_key("acme", "k404", 10).await.unwrap());
    assert!(s.revoke_key("acme", "k1", 10).await.unwrap());
    assert_eq!(s.find_key("h1").await.unwrap(), None);
    let listed = s.list_keys("acme").await.unwrap();
    assert!(listed[0].revoked && !listed[1].revoked, "{listed:?}");
    assert_eq!(listed[1].expires_at_ms, Some(1_000));
    assert!(listed[1].expired(1_000) && !listed[1].expired(999));

    // Last use only moves forward; an unknown hash creates nothing.
    s.touch_keys(&[("h2".into(), 50), ("h404".into(), 60)])
        .await
        .unwrap();
    s.touch_keys(&[("h2".into(), 40)]).await.unwrap();
    assert_eq!(
        s.find_key("h2").await.unwrap().unwrap().last_used_at_ms,
        Some(50)
    );
    s.touch_keys(&[("h2".into(), 70)]).await.unwrap();
    let listed = s.list_keys("acme").await.unwrap();
    assert_eq!(listed[1].last_used_at_ms, Some(70));
    assert_eq!(listed[0].last_used_at_ms, None);
    assert_eq!(s.find_key("h404").await.unwrap(), None);
}

async fn sigv4_credentials(s: Arc<dyn Store>) {
    let c = |id: &str, tenant: &str, at: i64| SigV4CredentialRecord {
        access_key_id: id.into(),
        tenant_id: tenant.into(),
        application_id: (id == "AKIA2").then(|| "app".to_string()),
        sealed_secret: format!("sealed-{id}"),
        created_at_ms: at,
        revoked: false,
    };
    assert!(s
        .insert_sigv4_credential(&c("AKIA1", "acme", 1))
        .await
        .unwrap());
    assert!(s
        .insert_sigv4_credential(&c("AKIA2", "acme", 2))
        .await
        .unwrap());
    assert!(s
        .insert_sigv4_credential(&c("AKIA3", "beta", 3))
        .await
        .unwrap());
    assert!(!s
        .insert_sigv4_credential(&c("AKIA1", "beta", 4))
        .await
        .unwrap());
    assert_eq!(
        s.find_sigv4_credential("AKIA2").await.unwrap(),
        Some(c("AKIA2", "acme", 2))
    );
    assert_eq!(s.find_sigv4_credential("AKIA9").await.unwrap(), None);
    assert_eq!(
        s.list_sigv4_credentials("acme").await.unwrap(),
        vec![c("AKIA1", "acme", 1), c("AKIA2", "acme", 2)]
    );
    assert!(!s.revoke_sigv4_credential("beta", "AKIA1", 9).await.unwrap());
    assert!(!s.revoke_sigv4_credential("acme", "AKIA9", 9).await.unwrap());
    assert!(s.revoke_sigv4_credential("acme", "AKIA1", 9).await.unwrap());
    assert_eq!(s.find_sigv4_credential("AKIA1").await.unwrap(), None);
    let listed = s.list_sigv4_credentials("acme").await.unwrap();
    assert!(listed[0].revoked && !listed[1].revoked, "{listed:?}");
}

fn cred(id: &str, tenant: &str, sealed: &str) -> SigV4CredentialRecord {
    SigV4CredentialRecord {
        access_key_id: id.into(),
        tenant_id: tenant.into(),
        application_id: None,
        sealed_secret: sealed.into(),
        created_at_ms: T0,
        revoked: false,
    }
}

async fn sealed_of(s: &Arc<dyn Store>, id: &str) -> (String, bool) {
    let c = s
        .list_all_sigv4_credentials()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.access_key_id == id)
        .unwrap_or_else(|| panic!("{id} not listed"));
    (c.sealed_secret, c.revoked)
}

async fn sigv4_sealed_secrets_are_listed_and_replaced_conditionally(s: Arc<dyn Store>) {
    assert!(s.list_all_sigv4_credentials().await.unwrap().is_empty());
    for (id, tenant) in [("AKIA2", "beta"), ("AKIA1", "acme"), ("AKIA3", "acme")] {
        assert!(s
            .insert_sigv4_credential(&cred(id, tenant, &format!("old-{id}")))
            .await
            .unwrap());
    }
    assert!(s
        .revoke_sigv4_credential("acme", "AKIA3", T0)
        .await
        .unwrap());
    // Every tenant's, revoked ones too, by access key id.
    let all = s.list_all_sigv4_credentials().await.unwrap();
    let ids: Vec<(&str, &str, bool)> = all
        .iter()
        .map(|c| (c.access_key_id.as_str(), c.tenant_id.as_str(), c.revoked))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("AKIA1", "acme", false),
            ("AKIA2", "beta", false),
            ("AKIA3", "acme", true)
        ]
    );

    // Only over the value read.
    assert!(!s
        .replace_sigv4_sealed_secret("AKIA1", "not-what-is-stored", "new-AKIA1")
        .await
        .unwrap());
    assert_eq!(sealed_of(&s, "AKIA1").await.0, "old-AKIA1");
    assert!(s
        .replace_sigv4_sealed_secret("AKIA1", "old-AKIA1", "new-AKIA1")
        .await
        .unwrap());
    assert_eq!(
        s.find_sigv4_credential("AKIA1")
            .await
            .unwrap()
            .map(|c| c.sealed_secret)
            .as_deref(),
        Some("new-AKIA1")
    );
    // A second writer that read the old value loses.
    assert!(!s
        .replace_sigv4_sealed_secret("AKIA1", "old-AKIA1", "other-AKIA1")
        .await
        .unwrap());
    assert_eq!(sealed_of(&s, "AKIA1").await.0, "new-AKIA1");

    // A revocation made after the read is kept.
    assert!(s
        .revoke_sigv4_credential("beta", "AKIA2", T0)
        .await
        .unwrap());
    assert!(s
        .replace_sigv4_sealed_secret("AKIA2", "old-AKIA2", "new-AKIA2")
        .await
        .unwrap());
    assert_eq!(sealed_of(&s, "AKIA2").await, ("new-AKIA2".into(), true));
    assert_eq!(s.find_sigv4_credential("AKIA2").await.unwrap(), None);

    // No such credential: nothing is created.
    assert!(!s
        .replace_sigv4_sealed_secret("AKIA9", "old-AKIA9", "new-AKIA9")
        .await
        .unwrap());
    assert_eq!(s.list_all_sigv4_credentials().await.unwrap().len(), 3);
    assert_eq!(s.find_sigv4_credential("AKIA9").await.unwrap(), None);
}

/// What the sidecar wrote before key ids: `base64(nonce || ciphertext+tag)`
/// under the bare key, without associated data.
fn legacy_sealed(key_hex: &str, secret: &str) -> String {
    use aes_gcm::aead::{Aead, KeyInit};
    use base64::Engine;
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    let nonce = [3u8; 12];
    let ct = cipher
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), secret.as_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode([nonce.to_vec(), ct].concat())
}

async fn rewrap_reseals_every_secret_under_the_current_key(s: Arc<dyn Store>) {
    use tollgate_sidecar::rewrap::rewrap;
    use tollgate_sidecar::seal::Keyring;
    let (a, b, lost) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
    let ring = |current: &str, previous: &str| {
        Keyring::from_values(Some(current), Some(previous))
            .unwrap()
            .unwrap()
    };
    let (only_a, only_lost) = (ring(&a, ""), ring(&lost, ""));
    let rows = [
        ("AKIA1", only_a.seal("AKIA1", "secret-1").unwrap()),
        ("AKIA2", legacy_sealed(&a, "secret-2")),
        ("AKIA3", only_lost.seal("AKIA3", "secret-3").unwrap()),
        ("AKIA4", only_lost.seal("AKIA4", "secret-4").unwrap()),
        ("AKIA5", only_a.seal("AKIA5", "secret-5").unwrap()),
    ];
    for (id, sealed) in &rows {
        assert!(s
            .insert_sigv4_credential(&cred(id, "acme", sealed))
            .await
            .unwrap());
    }
    // AKIA4: revoked, and no key opens it; AKIA5: revoked, still re-sealed.
    for id in ["AKIA4", "AKIA5"] {
        assert!(s.revoke_sigv4_credential("acme", id, T0).await.unwrap());
    }
    let rotated = ring(&b, &a);

    // A dry run counts and writes nothing.
    let dry = rewrap(&*s, &rotated, true).await.unwrap();
    assert_eq!(
        (
            dry.rewrapped,
            dry.already_current,
            dry.failed,
            dry.skipped_revoked
        ),
        (3, 0, 1, 1),
        "{dry:?}"
    );
    for (id, sealed) in &rows {
        assert_eq!(&sealed_of(&s, id).await.0, sealed);
    }

    let report = rewrap(&*s, &rotated, false).await.unwrap();
    assert_eq!(
        (
            report.rewrapped,
            report.already_current,
            report.failed,
            report.skipped_revoked
        ),
        (3, 0, 1, 1),
        "{report:?}"
    );
    assert_eq!(report.current_key_id, rotated.current_id());
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("AKIA3") && report.problems[0].contains(only_lost.current_id()),
        "{:?}",
        report.problems
    );
    // Re-sealed under B alone, bound to their access key ids; revocation kept.
    let only_b = ring(&b, "");
    for (id, want) in [
        ("AKIA1", "secret-1"),
        ("AKIA2", "secret-2"),
        ("AKIA5", "secret-5"),
    ] {
        let (sealed, _) = sealed_of(&s, id).await;
        assert!(only_b.is_current(&sealed), "{id}: {sealed}");
        assert_eq!(only_b.open(id, &sealed).unwrap(), want);
    }
    assert!(sealed_of(&s, "AKIA5").await.1, "still revoked");
    assert_eq!(
        sealed_of(&s, "AKIA3").await.0,
        rows[2].1,
        "failed: untouched"
    );

    // Idempotent: a second run only checks.
    let again = rewrap(&*s, &rotated, false).await.unwrap();
    assert_eq!(
        (
            again.rewrapped,
            again.already_current,
            again.failed,
            again.skipped_revoked
        ),
        (0, 3, 1, 1),
        "{again:?}"
    );
}

async fn reserve_admits_and_denies_at_the_exact_boundary(s: Arc<dyn Store>) {
    // The period row does not exist yet: it starts at the given budget.
    for (i, remaining) in ["0.75", "0.5", "0.25"].iter().enumerate() {
        let id = format!("r{i}");
        assert_eq!(
            reserve(&s, &hold(&id, "acme", SONNET, "0.25"), "1.00").await,
            ReserveOutcome::Admitted
        );
        let h = s.get_hold(&id).await.unwrap().expect("hold");
        assert_eq!(h.budget_remaining_usd, d(remaining));
        assert_eq!(h.state, HoldState::Open);
        assert_eq!(h.hold_usd, d("0.25"));
        assert_eq!(h.rates, rates());
        assert_eq!(h.attribution.cost_center.as_deref(), Some("cc-1"));
    }
    // One cent-millionth too much is refused; exactly the rest is admitted.
    match reserve(&s, &hold("big", "acme", SONNET, "0.250001"), "1.00").await {
        ReserveOutcome::Insufficient {
            available,
            spent,
            budget,
        } => {
            assert_eq!(available, d("0.25"));
            assert_eq!(spent, Decimal::ZERO);
            assert_eq!(budget, d("1"));
        }
        other => panic!("expected Insufficient, got {other:?}"),
    }
    assert_eq!(
        s.get_hold("big").await.unwrap(),
        None,
        "a denial leaves no hold"
    );
    assert_eq!(
        reserve(&s, &hold("exact", "acme", SONNET, "0.25"), "1.00").await,
        ReserveOutcome::Admitted
    );
    assert!(matches!(
        reserve(&s, &hold("more", "acme", SONNET, "0.000001"), "1.00").await,
        ReserveOutcome::Insufficient { .. }
    ));
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("1"));
    assert_eq!(b.totals.available(), Decimal::ZERO);
    assert_identity(&b);
    // A denied request id can be retried once budget is back.
    assert!(s.release("r0", T0 + 1).await.unwrap());
    assert_eq!(
        reserve(&s, &hold("big", "acme", SONNET, "0.25"), "1.00").await,
        ReserveOutcome::Admitted
    );
}

async fn reserve_is_idempotent(s: Arc<dyn Store>) {
    let h = hold("r1", "acme", SONNET, "0.5");
    assert_eq!(reserve(&s, &h, "1").await, ReserveOutcome::Admitted);
    let stored = s.get_hold("r1").await.unwrap().unwrap();
    match reserve(&s, &h, "1").await {
        ReserveOutcome::Existing(e) => assert_eq!(*e, stored),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(bal(&s, "acme").await.totals.reserved_usd, d("0.5"));
}

async fn commit_is_idempotent(s: Arc<dyn Store>) {
    assert_eq!(
        reserve(&s, &hold("r1", "acme", SONNET, "0.02"), "10").await,
        ReserveOutcome::Admitted
    );
    match s.commit("r1", &usage(), false, T0 + 5).await.unwrap() {
        CommitApplied::Committed {
            cost, hold, totals, ..
        } => {
            assert_eq!(cost, d("0.0105"));
            assert_eq!(hold.request_id, "r1");
            assert_eq!(totals.counters.spent_usd, d("0.0105"));
            assert_eq!(totals.reserved_usd, Decimal::ZERO);
            assert_eq!(totals.budget_usd, d("10"));
            assert_eq!(totals.counters.requests, 1);
        }
        other => panic!("expected Committed, got {other:?}"),
    }
    let big = Usage {
        input_tokens: 999_999,
        output_tokens: 999_999,
        ..Default::default()
    };
    assert_eq!(
        s.commit("r1", &big, false, T0 + 6).await.unwrap(),
        CommitApplied::Duplicate {
            cost: Some(d("0.0105"))
        }
    );
    assert_eq!(
        s.commit("nope", &usage(), false, T0).await.unwrap(),
        CommitApplied::Unknown
    );
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105"));
    assert_eq!(b.totals.counters.requests, 1);
    assert_eq!(b.totals.counters.input_tokens, 1000);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_identity(&b);
    assert_eq!(
        s.get_hold("r1").await.unwrap().unwrap().state,
        HoldState::Committed
    );
    assert!(!s.release("r1", T0 + 7).await.unwrap());
}

async fn tenant_deletion_waits_for_holds_and_keeps_history(s: Arc<dyn Store>) {
    assert_eq!(
        s.delete_tenant("gone", T0).await.unwrap(),
        TenantDeletion::NotFound
    );
    s.put_tenant(&tenant("gone", "1"), PERIOD).await.unwrap();
    s.put_tenant(&tenant("stays", "1"), PERIOD).await.unwrap();
    let key = |id: &str, tenant: &str| ApiKeyRecord {
        key_id: id.into(),
        tenant_id: tenant.into(),
        application_id: None,
        key_hash: format!("hash-{id}"),
        created_at_ms: T0,
        revoked: false,
        expires_at_ms: None,
        last_used_at_ms: None,
    };
    assert!(s.insert_key(&key("kg", "gone")).await.unwrap());
    assert!(s.insert_key(&key("ks", "stays")).await.unwrap());
    assert!(s
        .insert_sigv4_credential(&SigV4CredentialRecord {
            access_key_id: "AKIAGONE".into(),
            tenant_id: "gone".into(),
            application_id: None,
            sealed_secret: "sealed".into(),
            created_at_ms: T0,
            revoked: false,
        })
        .await
        .unwrap());
    for t in ["gone", "stays"] {
        s.put_profile(&Profile {
            tenant_id: t.into(),
            application_id: None,
            model_id: SONNET.into(),
            arn: format!(
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/{t}"
            ),
        })
        .await
        .unwrap();
    }
    assert_eq!(
        reserve(&s, &hold("spent", "gone", SONNET, "0.1"), "1").await,
        ReserveOutcome::Admitted
    );
    assert!(matches!(
        s.commit("spent", &usage(), false, T0).await.unwrap(),
        CommitApplied::Committed { .. }
    ));

    // An open hold blocks the deletion, which then changes nothing.
    assert_eq!(
        reserve(&s, &hold("open", "gone", SONNET, "0.25"), "1").await,
        ReserveOutcome::Admitted
    );
    assert_eq!(
        s.delete_tenant("gone", T0 + 1).await.unwrap(),
        TenantDeletion::Busy {
            reserved_usd: d("0.25")
        }
    );
    assert!(s.get_tenant("gone").await.unwrap().is_some());
    assert!(s.find_key("hash-kg").await.unwrap().is_some());

    assert!(s.release("open", T0 + 2).await.unwrap());
    assert_eq!(
        s.delete_tenant("gone", T0 + 3).await.unwrap(),
        TenantDeletion::Deleted
    );
    assert_eq!(s.get_tenant("gone").await.unwrap(), None);
    assert_eq!(s.find_key("hash-kg").await.unwrap(), None);
    assert_eq!(s.find_sigv4_credential("AKIAGONE").await.unwrap(), None);
    assert!(s.list_profiles("gone").await.unwrap().is_empty());
    // History stays: the period's spend and the usage rows.
    assert_eq!(bal(&s, "gone").await.totals.counters.spent_usd, d("0.0105"));
    assert!(s
        .usage(None, None)
        .await
        .unwrap()
        .iter()
        .any(|u| u.tenant_id == "gone" && u.request_id == "spent"));
    // Other tenants are untouched.
    assert!(s.get_tenant("stays").await.unwrap().is_some());
    assert!(s.find_key("hash-ks").await.unwrap().is_some());
    assert_eq!(s.list_profiles("stays").await.unwrap().len(), 1);
    assert_eq!(
        s.delete_tenant("gone", T0 + 4).await.unwrap(),
        TenantDeletion::NotFound
    );
}

async fn rate_windows_count_exactly_under_concurrency(s: Arc<dyn Store>) {
    let rpm = |limit| RateTake {
        counter: "rpm".into(),
        amount: 1,
        limit,
    };
    let tpm = |amount, limit| RateTake {
        counter: "tpm".into(),
        amount,
        limit,
    };
    // 60 racing requests against 10 per minute: exactly 10 are counted.
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.take_rate("acme", 100, &[rpm(10)]).await.unwrap() })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        if let RateOutcome::Taken { used } = t.await.unwrap() {
            counts.extend(used);
        }
    }
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=10).collect::<Vec<u64>>(),
        "each take saw its own count"
    );
    assert_eq!(
        s.take_rate("acme", 100, &[rpm(10)]).await.unwrap(),
        RateOutcome::Refused {
            counter: "rpm".into(),
            used: vec![10]
        }
    );
    // The next minute, and another tenant, count on their own.
    assert!(s
        .take_rate("acme", 101, &[rpm(10)])
        .await
        .unwrap()
        .is_taken());
    assert!(s
        .take_rate("beta", 100, &[rpm(10)])
        .await
        .unwrap()
        .is_taken());

    // All counters or none: a full token counter refuses the request counter too.
    let model = || RateTake {
        counter: format!("tpm:{SONNET}"),
        amount: 600,
        limit: 1000,
    };
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5), tpm(600, 1000), model()])
            .await
            .unwrap(),
        RateOutcome::Taken {
            used: vec![1, 600, 600]
        }
    );
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5), tpm(300, 1000), model()])
            .await
            .unwrap(),
        RateOutcome::Refused {
            counter: format!("tpm:{SONNET}"),
            used: vec![1, 600, 600]
        }
    );
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5), tpm(500, 1000)])
            .await
            .unwrap()
            .refused(),
        Some("tpm")
    );
    // A correction gives tokens back; exactly up to the limit fits.
    s.adjust_rate("gamma", 7, "tpm", -200).await.unwrap();
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5), tpm(600, 1000)])
            .await
            .unwrap(),
        RateOutcome::Taken {
            used: vec![2, 1000]
        }
    );
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5), tpm(1, 1000)])
            .await
            .unwrap()
            .refused(),
        Some("tpm")
    );
    // Two requests were counted (the refused ones were not).
    for _ in 0..3 {
        assert!(s.take_rate("gamma", 7, &[rpm(5)]).await.unwrap().is_taken());
    }
    assert_eq!(
        s.take_rate("gamma", 7, &[rpm(5)]).await.unwrap().refused(),
        Some("rpm")
    );
    s.prune_rate_windows(200).await.unwrap();
}

async fn release_gives_the_hold_back(s: Arc<dyn Store>) {
    assert_eq!(
        reserve(&s, &hold("r1", "acme", SONNET, "0.4"), "1").await,
        ReserveOutcome::Admitted
    );
    assert_eq!(bal(&s, "acme").await.totals.reserved_usd, d("0.4"));
    assert!(s.release("r1", T0 + 1).await.unwrap());
    assert!(!s.release("r1", T0 + 2).await.unwrap(), "only once");
    assert!(!s.release("nope", T0 + 2).await.unwrap());
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.available(), d("1"));
    assert_eq!(
        s.get_hold("r1").await.unwrap().unwrap().state,
        HoldState::Released
    );
    // A commit after a release is still charged, once.
    assert!(matches!(
        s.commit("r1", &usage(), true, T0 + 3).await.unwrap(),
        CommitApplied::Committed { .. }
    ));
    assert!(matches!(
        s.commit("r1", &usage(), true, T0 + 4).await.unwrap(),
        CommitApplied::Duplicate { .. }
    ));
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105"));
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_identity(&b);
}

async fn late_commit_after_expiry_debits_once(s: Arc<dyn Store>) {
    let h = hold("r1", "acme", SONNET, "0.3");
    assert_eq!(reserve(&s, &h, "1").await, ReserveOutcome::Admitted);
    assert_eq!(s.expire_holds(h.expires_at_ms - 1).await.unwrap(), 0);
    assert_eq!(s.expire_holds(h.expires_at_ms).await.unwrap(), 1);
    assert_eq!(s.expire_holds(h.expires_at_ms + 1).await.unwrap(), 0);
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(
        s.get_hold("r1").await.unwrap().unwrap().state,
        HoldState::Expired
    );
    let late = h.expires_at_ms + 10;
    assert!(matches!(
        s.commit("r1", &usage(), false, late).await.unwrap(),
        CommitApplied::Committed { .. }
    ));
    assert!(matches!(
        s.commit("r1", &usage(), false, late + 1).await.unwrap(),
        CommitApplied::Duplicate { .. }
    ));
    assert_eq!(s.expire_holds(late + 1_000_000).await.unwrap(), 0);
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105"));
    assert_eq!(b.totals.counters.requests, 1);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.available(), d("0.9895"));
    assert_identity(&b);
}

async fn commit_racing_the_sweeper_debits_once(s: Arc<dyn Store>) {
    const N: usize = 20;
    for i in 0..N {
        assert_eq!(
            reserve(&s, &hold(&format!("r{i}"), "acme", SONNET, "0.02"), "10").await,
            ReserveOutcome::Admitted
        );
    }
    let expiry = hold("x", "acme", SONNET, "0").expires_at_ms;
    let mut tasks = Vec::new();
    for i in 0..N {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(&format!("r{i}"), &usage(), false, expiry + 1)
                .await
                .unwrap()
        }));
    }
    let sweeper = {
        let s = s.clone();
        tokio::spawn(async move {
            let mut n = 0;
            for _ in 0..3 {
                n += s.expire_holds(expiry + 1).await.unwrap();
            }
            n
        })
    };
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CommitApplied::Committed { .. }));
    }
    let expired = sweeper.await.unwrap();
    assert!(expired <= N as u64);
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105") * Decimal::from(N));
    assert_eq!(b.totals.counters.requests, N as u64);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_identity(&b);
}

async fn balance_sums_by_model(s: Arc<dyn Store>) {
    let empty = s.balance("acme", PERIOD, d("7")).await.unwrap();
    assert_eq!(empty.totals.budget_usd, d("7"));
    assert_eq!(empty.totals.available(), d("7"));
    assert!(empty.by_model.is_empty());

    let mut h = hold("r1", "acme", SONNET, "0.1");
    assert_eq!(reserve(&s, &h, "5").await, ReserveOutcome::Admitted);
    h = hold("r2", "acme", HAIKU, "0.1");
    assert_eq!(reserve(&s, &h, "5").await, ReserveOutcome::Admitted);
    h = hold("r3", "acme", HAIKU, "0.1");
    assert_eq!(reserve(&s, &h, "5").await, ReserveOutcome::Admitted);
    let u2 = Usage {
        input_tokens: 10,
        output_tokens: 20,
        cache_read_input_tokens: 30,
        cache_write_input_tokens: 40,
    };
    s.commit("r1", &usage(), false, T0 + 1).await.unwrap();
    s.commit("r2", &u2, false, T0 + 2).await.unwrap();
    s.commit("r3", &u2, false, T0 + 3).await.unwrap();
    // Another tenant and another period stay apart.
    let mut other = hold("o1", "beta", SONNET, "0.1");
    assert_eq!(reserve(&s, &other, "5").await, ReserveOutcome::Admitted);
    s.commit("o1", &usage(), false, T0).await.unwrap();
    other = hold("p1", "acme", SONNET, "0.1");
    other.period = "2026-10".into();
    assert_eq!(reserve(&s, &other, "5").await, ReserveOutcome::Admitted);
    s.commit("p1", &usage(), false, T0).await.unwrap();

    let b = bal(&s, "acme").await;
    let cost2 = rates().cost(&u2).unwrap();
    assert_eq!(b.totals.counters.spent_usd, d("0.0105") + cost2 + cost2);
    assert_eq!(b.totals.counters.requests, 3);
    assert_eq!(b.totals.counters.input_tokens, 1020);
    assert_eq!(b.totals.counters.cache_write_input_tokens, 80);
    assert_eq!(b.by_model.len(), 2);
    assert_eq!(b.by_model[SONNET].spent_usd, d("0.0105"));
    assert_eq!(b.by_model[HAIKU].spent_usd, cost2 + cost2);
    assert_eq!(b.by_model[HAIKU].cache_read_input_tokens, 60);
    assert_eq!(b.by_model[HAIKU].requests, 2);
    let sum: Decimal = b.by_model.values().map(|c| c.spent_usd).sum();
    assert_eq!(sum, b.totals.counters.spent_usd);
    let requests: u64 = b.by_model.values().map(|c| c.requests).sum();
    assert_eq!(requests, b.totals.counters.requests);
    assert_identity(&b);
    let oct = s.balance("acme", "2026-10", d("5")).await.unwrap();
    assert_eq!(oct.totals.counters.requests, 1);
    assert_eq!(oct.by_model.len(), 1);
}

fn alert(tenant: &str, period: &str, kind: AlertKind, at: i64) -> AlertRecord {
    AlertRecord {
        tenant_id: tenant.into(),
        period: period.into(),
        scope: SCOPE_TENANT.into(),
        kind,
        threshold: (kind == AlertKind::Threshold).then(|| d("0.8")),
        fired_at_ms: at,
        spent_usd: d("8.5"),
        budget_usd: d("10"),
        request_id: Some(format!("req-{at}")),
        cost_usd: (kind == AlertKind::HighCost).then(|| d("12.5")),
    }
}

async fn alerts_fire_once_per_tenant_period_kind(s: Arc<dyn Store>) {
    let a = alert;
    let rec = |a: AlertRecord| {
        let s = s.clone();
        async move { s.record_alert(&a, "{}", &[]).await.unwrap() }
    };
    assert!(rec(a("acme", PERIOD, AlertKind::Threshold, 1)).await);
    assert!(!rec(a("acme", PERIOD, AlertKind::Threshold, 2)).await);
    assert!(rec(a("acme", PERIOD, AlertKind::HighCost, 3)).await);
    assert!(rec(a("acme", "2026-12", AlertKind::Threshold, 4)).await);
    assert!(rec(a("beta", PERIOD, AlertKind::Threshold, 5)).await);
    assert_eq!(
        s.list_alerts("acme").await.unwrap(),
        vec![
            a("acme", PERIOD, AlertKind::Threshold, 1),
            a("acme", PERIOD, AlertKind::HighCost, 3),
            a("acme", "2026-12", AlertKind::Threshold, 4),
        ]
    );
    // Without targets nothing is queued.
    assert_eq!(s.outbox_counts().await.unwrap(), (0, 0));
}

async fn alerts_are_keyed_by_scope_and_threshold(s: Arc<dyn Store>) {
    let with = |scope: &str, t: Option<&str>, at: i64| AlertRecord {
        scope: scope.into(),
        threshold: t.map(d),
        ..alert("acme", PERIOD, AlertKind::Threshold, at)
    };
    let targets = vec!["webhook:abc".to_string()];
    let rec = |a: AlertRecord| {
        let (s, targets) = (s.clone(), targets.clone());
        async move { s.record_alert(&a, r#"{"x":1}"#, &targets).await.unwrap() }
    };
    assert!(rec(with(SCOPE_TENANT, Some("0.5"), 1)).await);
    assert!(rec(with(SCOPE_TENANT, Some("0.8"), 2)).await);
    // 0.80 is the same threshold as 0.8.
    assert!(!rec(with(SCOPE_TENANT, Some("0.80"), 3)).await);
    assert!(rec(with(&format!("model:{SONNET}"), Some("0.8"), 4)).await);
    assert!(!rec(with(&format!("model:{SONNET}"), Some("0.8"), 5)).await);
    let exhausted = |scope: &str, at| AlertRecord {
        scope: scope.to_string(),
        ..alert("acme", PERIOD, AlertKind::Exhausted, at)
    };
    assert!(rec(exhausted(&format!("model:{SONNET}"), 6)).await);
    assert!(rec(exhausted(SCOPE_TENANT, 7)).await);
    assert!(!rec(exhausted(SCOPE_TENANT, 8)).await);
    let listed = s.list_alerts("acme").await.unwrap();
    let keys: Vec<(String, Option<Decimal>, i64)> = listed
        .iter()
        .map(|a| (a.scope.clone(), a.threshold, a.fired_at_ms))
        .collect();
    let m = format!("model:{SONNET}");
    assert_eq!(
        keys,
        vec![
            (SCOPE_TENANT.into(), Some(d("0.5")), 1),
            (SCOPE_TENANT.into(), Some(d("0.8")), 2),
            (m.clone(), Some(d("0.8")), 4),
            (m, None, 6),
            (SCOPE_TENANT.into(), None, 7),
        ]
    );
    // One outbox entry per recorded alert (the refused ones queued nothing).
    assert_eq!(s.outbox_counts().await.unwrap(), (5, 0));
    let ids: std::collections::BTreeSet<String> = s
        .list_outbox(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.alert_id)
        .collect();
    let expected: std::collections::BTreeSet<String> =
        listed.iter().map(AlertRecord::alert_id).collect();
    assert_eq!(ids, expected);
}

async fn outbox_entries_are_claimed_retried_failed_and_delivered(s: Arc<dyn Store>) {
    let a = alert("acme", PERIOD, AlertKind::Threshold, T0);
    let id = a.alert_id();
    let targets = vec![
        "webhook:aaa".to_string(),
        "sns:arn:aws:sns:us-east-1:1:t".to_string(),
    ];
    assert!(s
        .record_alert(&a, r#"{"kind":"threshold"}"#, &targets)
        .await
        .unwrap());
    assert_eq!(s.outbox_counts().await.unwrap(), (2, 0));
    // Not due before the alert fired.
    assert!(s
        .claim_outbox(T0 - 1, T0 + 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    let claimed = s.claim_outbox(T0, T0 + 60_000, 10).await.unwrap();
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    for e in &claimed {
        assert_eq!(e.alert_id, id);
        assert_eq!(e.tenant_id, "acme");
        assert_eq!(e.payload, r#"{"kind":"threshold"}"#);
        assert_eq!(e.state, OutboxState::Pending);
        assert_eq!(e.attempts, 0);
        assert_eq!(e.next_attempt_ms, T0 + 60_000, "claimed until");
    }
    // Claimed entries are not handed out twice.
    assert!(s
        .claim_outbox(T0 + 1, T0 + 60_000, 10)
        .await
        .unwrap()
        .is_empty());
    s.finish_outbox(&id, "webhook:aaa", &OutboxResult::Delivered, T0 + 2)
        .await
        .unwrap();
    s.finish_outbox(
        &id,
        &targets[1],
        &OutboxResult::Retry {
            next_attempt_ms: T0 + 10_000,
            error: "SNS publish failed: boom".into(),
        },
        T0 + 2,
    )
    .await
    .unwrap();
    assert_eq!(s.outbox_counts().await.unwrap(), (1, 0));
    assert!(s
        .claim_outbox(T0 + 9_999, T0 + 70_000, 10)
        .await
        .unwrap()
        .is_empty());
    let again = s.claim_outbox(T0 + 10_000, T0 + 70_000, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].target, targets[1]);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(
        again[0].last_error.as_deref(),
        Some("SNS publish failed: boom")
    );
    s.finish_outbox(
        &id,
        &targets[1],
        &OutboxResult::Failed {
            error: "gave up".into(),
        },
        T0 + 10_001,
    )
    .await
    .unwrap();
    assert_eq!(s.outbox_counts().await.unwrap(), (0, 1));
    let failed = s.list_outbox(Some(OutboxState::Failed), 10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].attempts, 2);
    assert!(s
        .claim_outbox(T0 + 999_999, T0 + 1_999_999, 10)
        .await
        .unwrap()
        .is_empty());
    // An operator requeues it: pending again, attempts reset, due now.
    assert_eq!(s.retry_outbox(&id, T0 + 20_000).await.unwrap(), 1);
    assert_eq!(s.retry_outbox(&id, T0 + 20_000).await.unwrap(), 0);
    let requeued = s.claim_outbox(T0 + 20_000, T0 + 80_000, 10).await.unwrap();
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0].attempts, 0);
    s.finish_outbox(&id, &targets[1], &OutboxResult::Delivered, T0 + 20_001)
        .await
        .unwrap();
    assert_eq!(s.outbox_counts().await.unwrap(), (0, 0));
    // The alert fires once: recording it again queues nothing new.
    assert!(!s.record_alert(&a, "{}", &targets).await.unwrap());
    assert_eq!(s.outbox_counts().await.unwrap(), (0, 0));
    assert!(s
        .claim_outbox(T0 + 99_999_999, T0 + 99_999_999, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn usage_records(s: Arc<dyn Store>) {
    for (i, at) in [(1, T0 + 100), (2, T0 + 200), (3, T0 + 300)] {
        let id = format!("r{i}");
        assert_eq!(
            reserve(&s, &hold(&id, "acme", SONNET, "0.1"), "5").await,
            ReserveOutcome::Admitted
        );
        s.commit(&id, &usage(), i == 2, at).await.unwrap();
    }
    // An uncommitted hold is not usage.
    assert_eq!(
        reserve(&s, &hold("r4", "acme", SONNET, "0.1"), "5").await,
        ReserveOutcome::Admitted
    );
    let all = s.usage(None, None).await.unwrap();
    assert_eq!(all.len(), 3);
    let ids: Vec<_> = all.iter().map(|u| u.request_id.as_str()).collect();
    assert_eq!(ids, ["r1", "r2", "r3"]);
    let r2 = &all[1];
    assert_eq!(r2.tenant_id, "acme");
    assert_eq!(r2.model_id, SONNET);
    assert_eq!(r2.usage, usage());
    assert_eq!(r2.cost_usd, d("0.0105"));
    assert!(r2.estimated && !all[0].estimated);
    assert_eq!(r2.at_ms, T0 + 200);
    assert_eq!(r2.attribution.application_id.as_deref(), Some("app"));
    assert_eq!(r2.attribution.user_id.as_deref(), Some("u-1"));
    assert_eq!(r2.attribution.environment, None);
    let mid = s.usage(Some(T0 + 200), Some(T0 + 300)).await.unwrap();
    assert_eq!(mid.len(), 1);
    assert_eq!(mid[0].request_id, "r2");
    assert_eq!(s.usage(Some(T0 + 301), None).await.unwrap().len(), 0);
    assert_eq!(s.usage(None, Some(T0 + 101)).await.unwrap().len(), 1);
}

async fn concurrent_reserves_never_overspend(s: Arc<dyn Store>) {
    // 200 concurrent holds of 0.04 against 1.00: exactly 25 fit.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let h = hold(&format!("c{i}"), "acme", SONNET, "0.04");
            (i, s.reserve(&h, d("1.00")).await.unwrap())
        }));
    }
    let mut admitted = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (i, ReserveOutcome::Admitted) => admitted.push(i),
            (_, ReserveOutcome::Insufficient { .. }) => {}
            (i, other) => panic!("c{i}: {other:?}"),
        }
    }
    assert_eq!(admitted.len(), 25, "admitted {admitted:?}");
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("1"));
    assert_eq!(b.totals.available(), Decimal::ZERO);
    assert_identity(&b);

    // Commit them all concurrently (0.0105 each < 0.04 held).
    let mut tasks = Vec::new();
    for i in admitted {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(&format!("c{i}"), &usage(), false, T0 + 1)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), CommitApplied::Committed { .. }));
    }
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.2625"));
    assert!(b.totals.counters.spent_usd <= b.totals.budget_usd);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.counters.requests, 25);
    assert_identity(&b);
}

async fn concurrent_reserves_and_commits_keep_the_ledger_exact(s: Arc<dyn Store>) {
    // 64 tasks × 4 reserve+commit pairs with different usage each: through the
    // SQLite group-commit writer many of them share one transaction.
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut costs = Decimal::ZERO;
            for k in 0..4u64 {
                let id = format!("g{t}-{k}");
                let h = hold(&id, "acme", if k % 2 == 0 { SONNET } else { HAIKU }, "0.02");
                assert_eq!(
                    s.reserve(&h, d("1000")).await.unwrap(),
                    ReserveOutcome::Admitted
                );
                let u = Usage {
                    input_tokens: 100 + t,
                    output_tokens: 10 + k,
                    cache_read_input_tokens: t % 3,
                    cache_write_input_tokens: k,
                };
                match s.commit(&id, &u, false, T0 + 1).await.unwrap() {
                    CommitApplied::Committed { cost, capped, .. } => {
                        assert!(!capped);
                        assert_eq!(cost, rates().cost(&u).unwrap());
                        costs += cost;
                    }
                    other => panic!("{id}: {other:?}"),
                }
            }
            costs
        }));
    }
    let mut total = Decimal::ZERO;
    for t in tasks {
        total += t.await.unwrap();
    }
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, total);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.counters.requests, 256);
    assert_eq!(
        b.by_model[SONNET].requests + b.by_model[HAIKU].requests,
        256
    );
    assert_eq!(
        b.by_model[SONNET].spent_usd + b.by_model[HAIKU].spent_usd,
        total
    );
    assert_identity(&b);
    let usage = s.usage(None, None).await.unwrap();
    assert_eq!(usage.len(), 256);
    assert_eq!(usage.iter().map(|u| u.cost_usd).sum::<Decimal>(), total);
}

async fn commit_caps_usage_at_what_the_request_could_use(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        // The usage cap comes with the lease work of each store.
        return;
    }
    let limited = |id: &str| Hold {
        max_output_tokens: 100,
        input_tokens_estimate: 1000,
        ..hold(id, "acme", SONNET, "0.1")
    };
    for id in ["r1", "r2", "r3"] {
        assert_eq!(
            reserve(&s, &limited(id), "10").await,
            ReserveOutcome::Admitted
        );
    }
    assert_eq!(
        s.get_hold("r1")
            .await
            .unwrap()
            .unwrap()
            .input_tokens_estimate,
        1000
    );
    // More output than the limit: 1000 × 3 + 100 × 15 per 1M.
    match s.commit("r1", &usage(), false, T0 + 1).await.unwrap() {
        CommitApplied::Committed {
            cost,
            capped,
            usage: charged,
            ..
        } => {
            assert!(capped);
            assert_eq!(cost, d("0.0045"));
            // What metrics and EMF count: the charged usage, not the report.
            assert_eq!((charged.input_tokens, charged.output_tokens), (1000, 100));
        }
        other => panic!("{other:?}"),
    }
    // An estimate above the hold's input estimate: 1000 × 3 + 50 × 15.
    let big_input = Usage {
        input_tokens: 5000,
        output_tokens: 50,
        ..Usage::default()
    };
    match s.commit("r2", &big_input, true, T0 + 2).await.unwrap() {
        CommitApplied::Committed { cost, capped, .. } => {
            assert!(capped);
            assert_eq!(cost, d("0.00375"));
        }
        other => panic!("{other:?}"),
    }
    // Reported (not estimated) input is charged as reported.
    match s.commit("r3", &big_input, false, T0 + 3).await.unwrap() {
        CommitApplied::Committed { cost, capped, .. } => {
            assert!(!capped);
            assert_eq!(cost, d("0.01575"));
        }
        other => panic!("{other:?}"),
    }
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.024"));
    assert_eq!(b.totals.counters.output_tokens, 200);
    assert_eq!(b.totals.counters.input_tokens, 7000);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_identity(&b);
    let rows = s.usage(None, None).await.unwrap();
    let flags: Vec<_> = rows
        .iter()
        .map(|u| (u.request_id.as_str(), u.capped))
        .collect();
    assert_eq!(flags, [("r1", true), ("r2", true), ("r3", false)]);
    assert_eq!(rows[0].usage.output_tokens, 100);
    assert_eq!(rows[1].usage.input_tokens, 1000);
    assert_eq!(rows[2].usage, big_input);
    // A duplicate commit replays the capped cost.
    assert_eq!(
        s.commit("r1", &usage(), false, T0 + 4).await.unwrap(),
        CommitApplied::Duplicate {
            cost: Some(d("0.0045"))
        }
    );
}

fn lease_terms(tenant: &str) -> LeaseTerms {
    LeaseTerms {
        tenant_id: tenant.to_string(),
        application_id: Some("app".into()),
        model_id: SONNET.to_string(),
        target_model: "arn:aws:bedrock:us-east-1:1:application-inference-profile/x".into(),
        rates: rates(),
        default_max_output_tokens: 1000,
        max_tokens_cap: Some(4000),
    }
}

fn lease(id: &str, tenant: &str) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.to_string(),
        period: PERIOD.to_string(),
        terms: lease_terms(tenant),
        credential_ref: "key:k-1".into(),
        requested_model: "claude-3-sonnet".into(),
        reserved_usd: Decimal::ZERO,
        seq: 0,
        last_granted_usd: Decimal::ZERO,
        created_at_ms: T0,
        expires_at_ms: T0 + 30_000,
        state: HoldState::Open,
    }
}

fn sizing(want: &str, min: &str, fraction: &str) -> LeaseSizing {
    LeaseSizing {
        want: d(want),
        min: d(min),
        fraction: d(fraction),
    }
}

/// `spent + reserved ≤ budget`, and the identity, on the tenant's period row.
async fn assert_within_budget(s: &Arc<dyn Store>, t: &str) -> Balance {
    let b = bal(s, t).await;
    assert_identity(&b);
    assert!(
        b.totals.counters.spent_usd + b.totals.reserved_usd <= b.totals.budget_usd,
        "{:?}",
        b.totals
    );
    assert!(b.totals.reserved_usd >= Decimal::ZERO, "{:?}", b.totals);
    b
}

async fn lease_of(s: &Arc<dyn Store>, id: &str) -> LeaseRecord {
    s.get_lease(id).await.unwrap().expect("lease exists")
}

async fn lease_grant_fits_or_is_refused_and_is_exactly_min_near_the_cap(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        return;
    }
    let budget = d("1.00");
    // want 0.30 < half of 1.00.
    assert_eq!(
        s.grant_lease(&lease("l1", "acme"), &sizing("0.30", "0.01", "0.5"), budget)
            .await
            .unwrap(),
        LeaseOutcome::Granted {
            granted: d("0.30"),
            remaining: d("0.70")
        }
    );
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.30"));
    assert_eq!(b.totals.budget_usd, budget);
    let l1 = lease_of(&s, "l1").await;
    assert_eq!(l1.reserved_usd, d("0.30"));
    assert_eq!(l1.seq, 0);
    assert_eq!(l1.state, HoldState::Open);
    assert_eq!(l1.terms, lease_terms("acme"));
    assert_eq!(l1.credential_ref, "key:k-1");
    assert_eq!(l1.requested_model, "claude-3-sonnet");
    assert_eq!(l1.expires_at_ms, T0 + 30_000);
    // want 10: half of the 0.70 left.
    assert_eq!(
        s.grant_lease(&lease("l2", "acme"), &sizing("10", "0.01", "0.5"), budget)
            .await
            .unwrap(),
        LeaseOutcome::Granted {
            granted: d("0.35"),
            remaining: d("0.35")
        }
    );
    assert_within_budget(&s, "acme").await;
    // A per-request hold takes nearly all the rest: not even `min` fits.
    assert_eq!(
        reserve(&s, &hold("h1", "acme", SONNET, "0.345"), "1.00").await,
        ReserveOutcome::Admitted
    );
    assert_eq!(
        s.grant_lease(&lease("l3", "acme"), &sizing("1", "0.01", "0.5"), budget)
            .await
            .unwrap(),
        LeaseOutcome::Insufficient {
            available: d("0.005"),
            spent: Decimal::ZERO,
            budget,
        }
    );
    assert_eq!(s.get_lease("l3").await.unwrap(), None);
    assert_within_budget(&s, "acme").await;
    // Near the cap the grant is exactly `min`: half of 0.35 < min 0.30.
    assert!(s.release("h1", T0 + 1).await.unwrap());
    assert_eq!(
        s.grant_lease(&lease("l4", "acme"), &sizing("1", "0.30", "0.5"), budget)
            .await
            .unwrap(),
        LeaseOutcome::Granted {
            granted: d("0.30"),
            remaining: d("0.05")
        }
    );
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.95"));
    // A tenant without a period row gets one with the given budget.
    assert_eq!(
        s.grant_lease(&lease("l5", "beta"), &sizing("1", "0.5", "1"), d("0.40"))
            .await
            .unwrap(),
        LeaseOutcome::Insufficient {
            available: d("0.40"),
            spent: Decimal::ZERO,
            budget: d("0.40"),
        }
    );
    assert_eq!(
        s.grant_lease(&lease("l5", "beta"), &sizing("1", "0.1", "1"), d("0.40"))
            .await
            .unwrap(),
        LeaseOutcome::Granted {
            granted: d("0.40"),
            remaining: Decimal::ZERO
        }
    );
    assert_within_budget(&s, "beta").await;
}

async fn lease_renewal_returns_tops_up_and_replays(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        return;
    }
    let exp = T0 + 60_000;
    assert!(matches!(
        s.grant_lease(&lease("l1", "acme"), &sizing("0.2", "0.01", "0.5"), d("1"))
            .await
            .unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    // Returns 0.05 (0.15 left), then takes min(0.1, half of 0.85).
    let renewed = s
        .renew_lease(
            "l1",
            1,
            d("0.05"),
            &sizing("0.1", "0.01", "0.5"),
            PERIOD,
            T0 + 1,
            exp,
        )
        .await
        .unwrap();
    assert_eq!(
        renewed,
        RenewApplied::Renewed {
            granted: d("0.1"),
            remaining: d("0.75")
        }
    );
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.25"));
    let l1 = lease_of(&s, "l1").await;
    assert_eq!(
        (l1.seq, l1.last_granted_usd, l1.reserved_usd),
        (1, d("0.1"), d("0.25"))
    );
    assert_eq!(l1.expires_at_ms, exp);
    // The same seq again (a retry) replays and changes nothing.
    let replay = s
        .renew_lease(
            "l1",
            1,
            d("0.2"),
            &sizing("0.5", "0.01", "0.5"),
            PERIOD,
            T0 + 2,
            exp + 9,
        )
        .await
        .unwrap();
    assert_eq!(replay, renewed);
    assert_eq!(bal(&s, "acme").await, b);
    assert_eq!(lease_of(&s, "l1").await, l1);
    // An older seq is refused.
    match s
        .renew_lease(
            "l1",
            0,
            d("0"),
            &sizing("0.5", "0.01", "0.5"),
            PERIOD,
            T0 + 3,
            exp,
        )
        .await
    {
        Err(Error::Invalid(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(bal(&s, "acme").await, b);
    // A tenant spending elsewhere leaves less: the grant follows the fraction.
    assert_eq!(
        reserve(&s, &hold("h1", "acme", SONNET, "0.55"), "1").await,
        ReserveOutcome::Admitted
    );
    assert_eq!(
        s.renew_lease(
            "l1",
            2,
            d("0"),
            &sizing("1", "0.01", "0.5"),
            PERIOD,
            T0 + 4,
            exp
        )
        .await
        .unwrap(),
        RenewApplied::Renewed {
            granted: d("0.1"),
            remaining: d("0.1")
        }
    );
    assert_within_budget(&s, "acme").await;
    // Nothing available and min not met: a zero grant, the lease stays open.
    assert_eq!(
        s.renew_lease(
            "l1",
            3,
            d("0"),
            &sizing("1", "0.2", "0.5"),
            PERIOD,
            T0 + 5,
            exp
        )
        .await
        .unwrap(),
        RenewApplied::Renewed {
            granted: Decimal::ZERO,
            remaining: d("0.1")
        }
    );
    assert_eq!(lease_of(&s, "l1").await.state, HoldState::Open);
    // Returning more than it holds returns what it holds; wanting nothing with
    // nothing left releases it.
    assert_eq!(
        s.renew_lease(
            "l1",
            4,
            d("5"),
            &sizing("0", "0.01", "0.5"),
            PERIOD,
            T0 + 6,
            exp
        )
        .await
        .unwrap(),
        RenewApplied::Renewed {
            granted: Decimal::ZERO,
            remaining: d("0.45")
        }
    );
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.55"));
    let l1 = lease_of(&s, "l1").await;
    assert_eq!(l1.reserved_usd, Decimal::ZERO);
    assert_ne!(l1.state, HoldState::Open);
    match s
        .renew_lease(
            "l1",
            5,
            d("0"),
            &sizing("1", "0.01", "0.5"),
            PERIOD,
            T0 + 7,
            exp,
        )
        .await
        .unwrap()
    {
        RenewApplied::Closed { reason } => assert!(!reason.is_empty()),
        other => panic!("{other:?}"),
    }
    match s
        .renew_lease(
            "nope",
            1,
            d("0"),
            &sizing("1", "0.01", "0.5"),
            PERIOD,
            T0 + 7,
            exp,
        )
        .await
        .unwrap()
    {
        RenewApplied::Closed { reason } => assert!(!reason.is_empty()),
        other => panic!("{other:?}"),
    }
    assert_eq!(bal(&s, "acme").await, b);
}

async fn lease_of_an_ended_period_is_closed_and_given_back(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        return;
    }
    assert!(matches!(
        s.grant_lease(&lease("l1", "acme"), &sizing("0.2", "0.01", "0.5"), d("1"))
            .await
            .unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    match s
        .renew_lease(
            "l1",
            1,
            d("0"),
            &sizing("0.2", "0.01", "0.5"),
            "2026-12",
            T0 + 1,
            T0 + 60_000,
        )
        .await
        .unwrap()
    {
        RenewApplied::Closed { reason } => assert!(reason.contains("period"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.available(), d("1"));
    let l1 = lease_of(&s, "l1").await;
    assert_ne!(l1.state, HoldState::Open);
    // Nothing was granted in the new period either.
    let next = s.balance("acme", "2026-12", d("1")).await.unwrap();
    assert_eq!(next.totals.reserved_usd, Decimal::ZERO);
    // The sweeper does not count it again.
    assert_eq!(s.expire_holds(T0 + 600_000).await.unwrap(), 0);
    assert_eq!(bal(&s, "acme").await, b);
}

fn leased(id: &str, lease_id: &str, hold_usd: &str) -> LeasedCommit {
    LeasedCommit {
        request_id: id.to_string(),
        lease_id: lease_id.to_string(),
        usage: usage(),
        estimated: false,
        capped: false,
        hold_usd: d(hold_usd),
        attribution: Attribution {
            application_id: Some("spoofed".into()),
            cost_center: Some("cc-9".into()),
            environment: Some("prod".into()),
            user_id: Some("u-9".into()),
        },
    }
}

async fn leased_commits_move_the_hold_and_are_idempotent(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        return;
    }
    assert!(matches!(
        s.grant_lease(&lease("l1", "acme"), &sizing("0.2", "0.01", "0.5"), d("1"))
            .await
            .unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    match s
        .commit_leased(&leased("r1", "l1", "0.05"), T0 + 1)
        .await
        .unwrap()
    {
        CommitApplied::Committed {
            cost,
            capped,
            usage,
            hold,
            totals,
            scopes,
        } => {
            assert!(scopes.is_empty(), "{scopes:?}");
            assert_eq!(cost, d("0.0105"));
            assert!(!capped);
            assert_eq!(usage, leased("r1", "l1", "0.05").usage);
            assert_eq!(hold.request_id, "r1");
            assert_eq!(hold.tenant_id, "acme");
            assert_eq!(hold.period, PERIOD);
            assert_eq!(hold.model_id, SONNET);
            assert_eq!(hold.target_model, lease_terms("acme").target_model);
            assert_eq!(hold.rates, rates());
            assert_eq!(hold.hold_usd, d("0.05"));
            assert_eq!(hold.attribution.application_id.as_deref(), Some("app"));
            assert_eq!(hold.attribution.cost_center.as_deref(), Some("cc-9"));
            assert_eq!(totals.counters.spent_usd, d("0.0105"));
            assert_eq!(totals.reserved_usd, d("0.15"));
        }
        other => panic!("{other:?}"),
    }
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105"));
    assert_eq!(b.totals.reserved_usd, d("0.15"));
    assert_eq!(b.by_model[SONNET].spent_usd, d("0.0105"));
    assert_eq!(b.by_model[SONNET].requests, 1);
    assert_eq!(b.by_model[SONNET].output_tokens, 500);
    assert_eq!(lease_of(&s, "l1").await.reserved_usd, d("0.15"));
    // The second delivery is a duplicate with the first cost; nothing moves.
    let l1 = lease_of(&s, "l1").await;
    assert_eq!(
        s.commit_leased(&leased("r1", "l1", "0.05"), T0 + 2)
            .await
            .unwrap(),
        CommitApplied::Duplicate {
            cost: Some(d("0.0105"))
        }
    );
    assert_eq!(bal(&s, "acme").await, b);
    assert_eq!(lease_of(&s, "l1").await, l1);
    // A hold larger than what the lease still holds moves only that.
    let mut r2 = leased("r2", "l1", "1.00");
    r2.estimated = true;
    r2.capped = true;
    assert!(matches!(
        s.commit_leased(&r2, T0 + 3).await.unwrap(),
        CommitApplied::Committed { capped: true, .. }
    ));
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.021"));
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(lease_of(&s, "l1").await.reserved_usd, Decimal::ZERO);
    assert_eq!(
        s.commit_leased(&leased("r3", "nope", "0.05"), T0 + 4)
            .await
            .unwrap(),
        CommitApplied::Unknown
    );
    let rows = s.usage(None, None).await.unwrap();
    assert_eq!(rows.len(), 2);
    let r1 = &rows[0];
    assert_eq!(r1.request_id, "r1");
    assert_eq!(r1.tenant_id, "acme");
    assert_eq!(r1.model_id, SONNET);
    assert_eq!(r1.attribution.application_id.as_deref(), Some("app"));
    assert_eq!(r1.attribution.cost_center.as_deref(), Some("cc-9"));
    assert_eq!(r1.attribution.environment.as_deref(), Some("prod"));
    assert_eq!(r1.attribution.user_id.as_deref(), Some("u-9"));
    assert_eq!(r1.cost_usd, d("0.0105"));
    assert!(!r1.estimated && !r1.capped);
    assert_eq!(r1.at_ms, T0 + 1);
    assert!(rows[1].estimated && rows[1].capped);
}

async fn late_leased_commit_after_expiry_charges_once(s: Arc<dyn Store>) {
    if !s.supports_leases() {
        return;
    }
    assert!(matches!(
        s.grant_lease(&lease("l1", "acme"), &sizing("0.2", "0.01", "0.5"), d("1"))
            .await
            .unwrap(),
        LeaseOutcome::Granted { .. }
    ));
    assert_eq!(
        reserve(&s, &hold("h1", "acme", HAIKU, "0.1"), "1").await,
        ReserveOutcome::Admitted
    );
    // Not yet expired.
    assert_eq!(s.expire_holds(T0 + 29_999).await.unwrap(), 0);
    assert_eq!(lease_of(&s, "l1").await.state, HoldState::Open);
    // The lease expires first, then the hold (expires at T0 + 600 000).
    assert_eq!(s.expire_holds(T0 + 30_000).await.unwrap(), 1);
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.1"));
    assert_eq!(lease_of(&s, "l1").await.state, HoldState::Expired);
    assert_eq!(s.expire_holds(T0 + 600_000).await.unwrap(), 1);
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    match s
        .renew_lease(
            "l1",
            1,
            d("0"),
            &sizing("0.2", "0.01", "0.5"),
            PERIOD,
            T0 + 30_001,
            T0 + 90_000,
        )
        .await
        .unwrap()
    {
        RenewApplied::Closed { reason } => assert!(reason.contains("expired"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A commit arriving after the expiry is still charged, once, and leaves
    // reserved alone.
    assert!(matches!(
        s.commit_leased(&leased("r1", "l1", "0.05"), T0 + 40_000)
            .await
            .unwrap(),
        CommitApplied::Committed { .. }
    ));
    assert_eq!(
        s.commit_leased(&leased("r1", "l1", "0.05"), T0 + 40_001)
            .await
            .unwrap(),
        CommitApplied::Duplicate {
            cost: Some(d("0.0105"))
        }
    );
    let b = assert_within_budget(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.0105"));
    assert_eq!(b.totals.counters.requests, 1);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(s.usage(None, None).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// runners

async fn model_budgets_cap_holds_inside_the_tenant_budget(s: Arc<dyn Store>) {
    // Tenant $10, sonnet $0.05: sonnet is refused at the model cap, haiku is not.
    let r1 = capped("r1", "acme", SONNET, "0.03", "0.05");
    assert_eq!(reserve(&s, &r1, "10").await, ReserveOutcome::Admitted);
    assert_eq!(
        s.get_hold("r1").await.unwrap().unwrap().model_budget_usd,
        Some(d("0.05"))
    );
    match reserve(&s, &capped("r2", "acme", SONNET, "0.03", "0.05"), "10").await {
        ReserveOutcome::ScopeInsufficient {
            scope,
            available,
            spent,
            budget,
        } => {
            assert_eq!((scope.level, scope.id.as_str()), (Level::Model, SONNET));
            assert_eq!(available, d("0.02"));
            assert_eq!(spent, Decimal::ZERO);
            assert_eq!(budget, d("0.05"));
        }
        other => panic!("expected ScopeInsufficient, got {other:?}"),
    }
    assert_eq!(
        s.get_hold("r2").await.unwrap(),
        None,
        "a refused hold is not kept"
    );
    assert_eq!(
        reserve(&s, &hold("h1", "acme", HAIKU, "0.03"), "10").await,
        ReserveOutcome::Admitted
    );
    // Exactly the rest of the model budget fits.
    assert_eq!(
        reserve(&s, &capped("r3", "acme", SONNET, "0.02", "0.05"), "10").await,
        ReserveOutcome::Admitted
    );
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, d("0.08"));
    assert_eq!(b.model_limits.len(), 1, "{:?}", b.model_limits);
    assert_eq!(b.model_limits[SONNET].budget_usd, d("0.05"));
    assert_eq!(b.model_limits[SONNET].reserved_usd, d("0.05"));
    assert_eq!(
        b.model_limits[SONNET].available(b.by_model[SONNET].spent_usd),
        Decimal::ZERO
    );
    assert_identity(&b);
    assert_model_identity(&b);

    // Commits debit both rows and take the hold off both.
    assert!(matches!(
        s.commit("r1", &usage(), false, T0 + 1).await.unwrap(),
        CommitApplied::Committed { .. }
    ));
    assert!(matches!(
        s.commit("r1", &usage(), false, T0 + 2).await.unwrap(),
        CommitApplied::Duplicate { .. }
    ));
    s.commit("h1", &usage(), false, T0 + 2).await.unwrap();
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.counters.spent_usd, d("0.021"));
    assert_eq!(b.totals.reserved_usd, d("0.02"));
    assert_eq!(b.by_model[SONNET].spent_usd, d("0.0105"));
    assert_eq!(b.model_limits[SONNET].reserved_usd, d("0.02"));
    assert_identity(&b);
    assert_model_identity(&b);

    // Release gives the model row back too.
    assert!(s.release("r3", T0 + 3).await.unwrap());
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].reserved_usd, Decimal::ZERO);
    assert_eq!(
        b.model_limits[SONNET].available(b.by_model[SONNET].spent_usd),
        d("0.0395")
    );
    assert_model_identity(&b);
    assert!(matches!(
        reserve(&s, &capped("r4", "acme", SONNET, "0.0396", "0.05"), "10").await,
        ReserveOutcome::ScopeInsufficient { .. }
    ));
    // Expiry too; a late commit is charged once, without touching reserved.
    let r5 = capped("r5", "acme", SONNET, "0.0395", "0.05");
    assert_eq!(reserve(&s, &r5, "10").await, ReserveOutcome::Admitted);
    assert_eq!(s.expire_holds(r5.expires_at_ms).await.unwrap(), 1);
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert!(matches!(
        s.commit("r5", &usage(), false, r5.expires_at_ms + 1)
            .await
            .unwrap(),
        CommitApplied::Committed { .. }
    ));
    let b = bal(&s, "acme").await;
    assert_eq!(b.by_model[SONNET].spent_usd, d("0.021"));
    assert_eq!(b.model_limits[SONNET].reserved_usd, Decimal::ZERO);
    assert_eq!(
        b.model_limits[SONNET].available(b.by_model[SONNET].spent_usd),
        d("0.029")
    );
    assert_identity(&b);
    assert_model_identity(&b);

    // When the tenant budget is what refuses, the model row keeps nothing.
    match reserve(&s, &capped("t1", "tight", SONNET, "0.02", "1"), "0.01").await {
        ReserveOutcome::Insufficient { available, .. } => assert_eq!(available, d("0.01")),
        other => panic!("expected Insufficient, got {other:?}"),
    }
    assert_eq!(s.get_hold("t1").await.unwrap(), None);
    let b = bal(&s, "tight").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(
        b.model_limits
            .get(SONNET)
            .map(|l| l.reserved_usd)
            .unwrap_or_default(),
        Decimal::ZERO
    );
    assert_model_identity(&b);
    // A zero hold (request served without one) is admitted even at the cap.
    assert_eq!(
        reserve(&s, &capped("z1", "acme", SONNET, "0", "0.0001"), "10").await,
        ReserveOutcome::Admitted
    );
    assert!(s.release("z1", T0 + 5).await.unwrap());
}

async fn model_budget_rows_follow_config_and_history(s: Arc<dyn Store>) {
    // Spend before any model budget (a row only commits touched) counts.
    assert_eq!(
        reserve(&s, &hold("u1", "acme", SONNET, "0.02"), "10").await,
        ReserveOutcome::Admitted
    );
    s.commit("u1", &usage(), false, T0).await.unwrap();
    assert!(bal(&s, "acme").await.model_limits.is_empty());
    match reserve(&s, &capped("c1", "acme", SONNET, "0.01", "0.02"), "10").await {
        ReserveOutcome::ScopeInsufficient {
            available, spent, ..
        } => {
            assert_eq!(available, d("0.0095"));
            assert_eq!(spent, d("0.0105"));
        }
        other => panic!("expected ScopeInsufficient, got {other:?}"),
    }
    // A raised budget applies at the next reserve, with what is spent kept.
    assert_eq!(
        reserve(&s, &capped("c2", "acme", SONNET, "0.01", "0.03"), "10").await,
        ReserveOutcome::Admitted
    );
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].budget_usd, d("0.03"));
    assert_eq!(b.model_limits[SONNET].reserved_usd, d("0.01"));
    assert_model_identity(&b);
    // An uncapped hold on a row that has a budget (the budget was removed)
    // keeps its numbers straight; so does lowering the budget below the spend.
    assert_eq!(
        reserve(&s, &hold("u2", "acme", SONNET, "0.02"), "10").await,
        ReserveOutcome::Admitted
    );
    s.commit("u2", &usage(), false, T0 + 1).await.unwrap();
    s.commit("c2", &usage(), false, T0 + 2).await.unwrap();
    let b = bal(&s, "acme").await;
    assert_eq!(b.by_model[SONNET].spent_usd, d("0.0315"));
    assert_eq!(b.model_limits[SONNET].reserved_usd, Decimal::ZERO);
    assert_model_identity(&b);
    assert_identity(&b);
    assert!(matches!(
        reserve(&s, &capped("c3", "acme", SONNET, "0.001", "0.01"), "10").await,
        ReserveOutcome::ScopeInsufficient { .. }
    ));
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].budget_usd, d("0.01"));
    assert_eq!(
        b.model_limits[SONNET].available(b.by_model[SONNET].spent_usd),
        d("-0.0215")
    );
    assert_model_identity(&b);
    // Other periods keep their rows.
    let mut oct = capped("o1", "acme", SONNET, "0.01", "5");
    oct.period = "2026-10".into();
    assert_eq!(reserve(&s, &oct, "10").await, ReserveOutcome::Admitted);
    let b = s.balance("acme", "2026-10", d("10")).await.unwrap();
    assert_eq!(b.model_limits[SONNET].budget_usd, d("5"));
    assert_eq!(
        bal(&s, "acme").await.model_limits[SONNET].budget_usd,
        d("0.01")
    );
}

async fn concurrent_capped_reserves_never_overspend_the_model(s: Arc<dyn Store>) {
    // 190 holds of 0.01 against a 0.1 model budget inside a 1.0 tenant budget
    // (10 fit), with 10 haiku holds of 0.01 beside them (all fit): 200 at once.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let h = if i < 190 {
                capped(&format!("c{i}"), "acme", SONNET, "0.01", "0.1")
            } else {
                hold(&format!("h{i}"), "acme", HAIKU, "0.01")
            };
            let out = s.reserve(&h, d("1")).await.expect("reserve");
            (i, out)
        }));
    }
    let (mut sonnet, mut haiku) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (i, ReserveOutcome::Admitted) if i < 190 => sonnet += 1,
            (_, ReserveOutcome::Admitted) => haiku += 1,
            (i, ReserveOutcome::ScopeInsufficient { .. }) if i < 190 => {}
            (i, other) => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(sonnet, 10);
    assert_eq!(haiku, 10);
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].reserved_usd, d("0.1"));
    assert_eq!(b.totals.reserved_usd, d("0.2"));
    assert_identity(&b);
    assert_model_identity(&b);
}

async fn prices_are_kept_per_region(s: Arc<dyn Store>) {
    let price = |input: &str| ModelPrice {
        model_id: SONNET.into(),
        input: d(input),
        output: d("15"),
        cache_read: None,
        cache_write: Some(d("3.75")),
    };
    s.put_price_in("global", &price("3")).await.unwrap();
    s.put_price_in("us-east-1", &price("3.30")).await.unwrap();
    s.put_price_in("eu-west-1", &price("3.5")).await.unwrap();
    let mut haiku = price("0.25");
    haiku.model_id = HAIKU.into();
    s.put_price_in("us-east-1", &haiku).await.unwrap();

    assert_eq!(
        s.get_price_in("global", SONNET).await.unwrap(),
        Some(price("3"))
    );
    assert_eq!(
        s.get_price_in("us-east-1", SONNET).await.unwrap(),
        Some(price("3.30"))
    );
    assert_eq!(s.get_price_in("eu-west-1", HAIKU).await.unwrap(), None);
    assert_eq!(s.get_price_in("ap-south-1", SONNET).await.unwrap(), None);
    // The plain methods use the store's region (`global` here).
    assert_eq!(s.pricing_region(), "global");
    assert_eq!(s.get_price(SONNET).await.unwrap(), Some(price("3")));
    assert_eq!(s.list_prices().await.unwrap(), vec![price("3")]);
    assert_eq!(
        s.list_prices_in("us-east-1").await.unwrap(),
        vec![haiku.clone(), price("3.30")]
    );
    assert!(s.list_prices_in("ap-south-1").await.unwrap().is_empty());
    // Overwriting one region leaves the others alone.
    s.put_price_in("us-east-1", &price("3.31")).await.unwrap();
    assert_eq!(
        s.get_price_in("us-east-1", SONNET).await.unwrap(),
        Some(price("3.31"))
    );
    assert_eq!(
        s.get_price_in("eu-west-1", SONNET).await.unwrap(),
        Some(price("3.5"))
    );
    assert_eq!(
        s.get_price_in("global", SONNET).await.unwrap(),
        Some(price("3"))
    );
}

async fn run_suite<F, Fut, A, AFut>(backend: &str, mut make: F, mut after: A)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
    A: FnMut(usize) -> AFut,
    AFut: Future<Output = ()>,
{
    let started = Instant::now();
    for (i, (name, case)) in all_cases().into_iter().enumerate() {
        let store = make(i).await;
        let t = Instant::now();
        eprintln!("[{backend}] {name} …");
        case(store).await;
        after(i).await;
        eprintln!("[{backend}] {name} ok ({} ms)", t.elapsed().as_millis());
    }
    eprintln!(
        "[{backend}] {} cases in {} ms",
        all_cases().len(),
        started.elapsed().as_millis()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn sqlite_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    run_suite(
        "sqlite",
        |i| {
        let path = root.join(format!("ledger-{i}.db"));
        async move { Arc::new(SqliteStore::open(&path).expect("open sqlite")) as Arc<dyn Store> }
        },
        |_| async {},
    )
    .await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn dynamodb_store_on_dynalite() {
    let dynalite = Dynalite::start();
    let conf = dynalite.sdk_config().await;
    let run = std::process::id();
    let client = aws_sdk_dynamodb::Client::new(&conf);
    let prefix = |i: usize| format!("t{run}-{i}-");
    run_suite(
        "dynamodb",
        |i| {
            let store = DynamoStore::from_sdk_config(
                &conf,
                &DynamoOptions {
                    table_prefix: prefix(i),
                    pricing_region: "global".into(),
                },
            );
            async move {
                let created = store.init_tables().await.expect("create tables");
                assert!(created.iter().all(|(_, c)| *c));
                // Idempotent.
                let again = store.init_tables().await.expect("init again");
                assert!(again.iter().all(|(_, c)| !*c));
                Arc::new(store) as Arc<dyn Store>
            }
        },
        |i| {
            let client = client.clone();
            let table = format!("{}TenantBudgets", prefix(i));
            async move { check_budget_rows(&client, &table).await }
        },
    )
    .await;

    let i = all_cases().len();
    let store = DynamoStore::from_sdk_config(
        &conf,
        &DynamoOptions {
            table_prefix: prefix(i),
            pricing_region: "global".into(),
        },
    );
    store.init_tables().await.expect("create tables");
    put_tenant_keeps_attributes_it_does_not_own(
        &client,
        &format!("{}TenantConfigs", prefix(i)),
        Arc::new(store),
    )
    .await;

    let i = i + 1;
    let store = DynamoStore::from_sdk_config(
        &conf,
        &DynamoOptions {
            table_prefix: prefix(i),
            pricing_region: "global".into(),
        },
    );
    store.init_tables().await.expect("create tables");
    sweeper_returns_the_model_count_of_a_reserve_that_died(&client, &prefix(i), Arc::new(store))
        .await;
    check_budget_rows(&client, &format!("{}TenantBudgets", prefix(i))).await;
    drop(dynalite);
}

/// A reserve that died after counting its hold in the model row (M1) but before
/// the ALL row (R2) leaves a `pending` hold: the sweeper expires it at its TTL
/// and its give-back returns the model row's count.
#[cfg(feature = "dynamodb")]
async fn sweeper_returns_the_model_count_of_a_reserve_that_died(
    client: &aws_sdk_dynamodb::Client,
    prefix: &str,
    s: Arc<dyn Store>,
) {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let h = capped("dead", "acme", SONNET, "0.04", "0.05");
    assert_eq!(reserve(&s, &h, "10").await, ReserveOutcome::Admitted);
    // Undo R3 and R2 by hand: the state a crash right after M1 leaves.
    client
        .update_item()
        .table_name(format!("{prefix}TollgateHolds"))
        .key("requestId", Av::S("dead".into()))
        .update_expression("SET #s = :p")
        .expression_attribute_names("#s", "state")
        .expression_attribute_values(":p", Av::S("pending".into()))
        .send()
        .await
        .expect("back to pending");
    client
        .update_item()
        .table_name(format!("{prefix}TenantBudgets"))
        .key("tenantId", Av::S("acme".into()))
        .key("modelId", Av::S(format!("{PERIOD}#ALL")))
        .update_expression("ADD #r :nh, #a :h DELETE #o :ids")
        .expression_attribute_names("#r", "reserved")
        .expression_attribute_names("#a", "available")
        .expression_attribute_names("#o", "openHolds")
        .expression_attribute_values(":nh", Av::N("-0.04".into()))
        .expression_attribute_values(":h", Av::N("0.04".into()))
        .expression_attribute_values(":ids", Av::Ss(vec!["dead".into()]))
        .send()
        .await
        .expect("undo R2");
    assert_eq!(
        s.get_hold("dead").await.unwrap(),
        None,
        "pending is not a hold"
    );
    let b = bal(&s, "acme").await;
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_eq!(b.model_limits[SONNET].reserved_usd, d("0.04"));
    // The model row is blocked until the sweeper runs.
    assert!(matches!(
        reserve(&s, &capped("next", "acme", SONNET, "0.02", "0.05"), "10").await,
        ReserveOutcome::ScopeInsufficient { .. }
    ));
    assert_eq!(s.expire_holds(h.expires_at_ms).await.unwrap(), 1);
    let b = bal(&s, "acme").await;
    assert_eq!(b.model_limits[SONNET].reserved_usd, Decimal::ZERO);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    assert_model_identity(&b);
    assert_eq!(
        reserve(&s, &capped("next", "acme", SONNET, "0.02", "0.05"), "10").await,
        ReserveOutcome::Admitted
    );
    assert!(s.release("next", T0 + 1).await.unwrap());
}

/// `put_tenant` updates the attributes Tollgate owns in place: attributes written
/// by others (the seed deployment's `createdAt`) survive, and the optional ones
/// that became null are removed.
#[cfg(feature = "dynamodb")]
async fn put_tenant_keeps_attributes_it_does_not_own(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    s: Arc<dyn Store>,
) {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let raw = || async {
        client
            .get_item()
            .table_name(table)
            .key("tenantId", Av::S("seeded".into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get item")
            .item
            .expect("item present")
    };
    // As the seed deployment writes it, with an attribute Tollgate does not know.
    client
        .put_item()
        .table_name(table)
        .item("tenantId", Av::S("seeded".into()))
        .item("budgetUsd", Av::N("3".into()))
        .item("alertThreshold", Av::N("0.8".into()))
        .item("resetCycle", Av::S("monthly".into()))
        .item("isActive", Av::Bool(true))
        .item("allowedModels", Av::L(vec![]))
        .item("maxTokens", Av::N("100".into()))
        .item("rateLimitTpm", Av::N("777".into()))
        .item("createdAt", Av::S("2026-01-01T00:00:00Z".into()))
        .send()
        .await
        .expect("seed item");
    let mut cfg = s
        .get_tenant("seeded")
        .await
        .unwrap()
        .expect("seeded tenant");
    assert_eq!(cfg.budget_usd, d("3"));
    assert_eq!(cfg.max_tokens_cap, Some(100));
    assert_eq!(cfg.rate_limit_tpm, Some(777));
    assert_eq!(cfg.rate_limit_rpm, None);

    // Clear two optional limits, set another.
    cfg.budget_usd = d("4");
    cfg.max_tokens_cap = None;
    cfg.rate_limit_tpm = None;
    cfg.rate_limit_rpm = Some(5);
    s.put_tenant(&cfg, PERIOD).await.unwrap();
    let item = raw().await;
    assert_eq!(
        item.get("createdAt"),
        Some(&Av::S("2026-01-01T00:00:00Z".into())),
        "{item:?}"
    );
    assert!(!item.contains_key("maxTokens"), "{item:?}");
    assert!(!item.contains_key("rateLimitTpm"), "{item:?}");
    assert_eq!(item.get("rateLimit"), Some(&Av::N("5".into())), "{item:?}");
    assert_eq!(item.get("budgetUsd"), Some(&Av::N("4".into())), "{item:?}");
    assert_eq!(s.get_tenant("seeded").await.unwrap(), Some(cfg.clone()));

    // The TPM limit is written with the rest, in the same attribute.
    cfg.rate_limit_tpm = Some(1234);
    s.put_tenant(&cfg, PERIOD).await.unwrap();
    let item = raw().await;
    assert_eq!(
        item.get("rateLimitTpm"),
        Some(&Av::N("1234".into())),
        "{item:?}"
    );
    assert_eq!(
        item.get("createdAt"),
        Some(&Av::S("2026-01-01T00:00:00Z".into())),
        "{item:?}"
    );
    assert_eq!(s.get_tenant("seeded").await.unwrap(), Some(cfg.clone()));
    assert_eq!(s.list_tenants().await.unwrap(), vec![cfg]);
}

/// Every `ALL` row keeps `available = totalBudget − totalCost − reserved` (the
/// attribute admission is conditioned on), and no commit is left half-done.
#[cfg(feature = "dynamodb")]
async fn check_budget_rows(client: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let items = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .expect("scan budgets")
        .items
        .unwrap_or_default();
    let num = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| -> Decimal {
        match item.get(k) {
            Some(AttributeValue::N(v)) => v.parse().expect("N"),
            None => Decimal::ZERO,
            other => panic!("{k}: {other:?}"),
        }
    };
    for item in &items {
        assert!(
            !item.contains_key("settling"),
            "half-done commit marker left: {item:?}"
        );
        let sk = match item.get("modelId") {
            Some(AttributeValue::S(v)) => v.clone(),
            other => panic!("modelId {other:?}"),
        };
        if sk.ends_with("#ALL") || item.contains_key("totalBudget") {
            assert_eq!(
                num(item, "available"),
                num(item, "totalBudget") - num(item, "totalCost") - num(item, "reserved"),
                "{item:?}"
            );
            // Holds by request id, and (DynamoDB leases) one `lease:<id>` entry
            // per open lease.
            let open = match item.get("openHolds") {
                Some(AttributeValue::Ss(v)) => v.len(),
                _ => 0,
            } + item
                .iter()
                .filter(|(k, v)| {
                    k.starts_with("lease:")
                        && matches!(v, AttributeValue::M(m) if !num(m, "r").is_zero())
                })
                .count();
            assert_eq!(
                num(item, "reserved").is_zero(),
                open == 0,
                "reserved and openHolds disagree: {item:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- nested budgets

/// A hold on `model` by `app` and `user`, each with its budget when given.
fn nested(
    id: &str,
    tenant: &str,
    model: &str,
    app: (&str, Option<&str>),
    user: (&str, Option<&str>),
) -> Hold {
    let mut h = hold(id, tenant, model, "0.01");
    h.attribution.application_id = Some(app.0.into());
    h.attribution.user_id = Some(user.0.into());
    h.app_budget_usd = app.1.map(d);
    h.user_budget_usd = user.1.map(d);
    h
}

/// `spent + reserved + available = budget` and `0 ≤ reserved`, `spent ≤
/// budget` on every application and user row.
fn assert_scope_identity(b: &Balance) {
    for (what, rows) in [("app", &b.by_application), ("user", &b.by_user)] {
        for (id, r) in rows {
            let spent = r.counters.spent_usd;
            assert_eq!(
                spent + r.limit.reserved_usd + r.limit.available(spent),
                r.limit.budget_usd,
                "{what} {id}: {r:?}"
            );
            assert!(r.limit.reserved_usd >= Decimal::ZERO, "{what} {id}: {r:?}");
            assert!(
                spent + r.limit.reserved_usd <= r.limit.budget_usd,
                "{what} {id} over its budget: {r:?}"
            );
        }
    }
}

async fn nested_budget_config_round_trips(s: Arc<dyn Store>) {
    let mut t = tenant("nest-cfg", "10");
    t.application_budgets = [("app-a".to_string(), d("2.5"))].into();
    t.user_budgets = [("alice@example.com".to_string(), d("0.75"))].into();
    t.default_user_budget_usd = Some(d("0.1"));
    s.put_tenant(&t, PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("nest-cfg").await.unwrap(), Some(t.clone()));
    assert_eq!(t.user_budget(Some("alice@example.com")), Some(d("0.75")));
    assert_eq!(t.user_budget(Some("bob")), Some(d("0.1")));
    assert_eq!(t.user_budget(None), None);
    // Cleared again: the attributes go.
    t.application_budgets.clear();
    t.user_budgets.clear();
    t.default_user_budget_usd = None;
    s.put_tenant(&t, PERIOD).await.unwrap();
    assert_eq!(s.get_tenant("nest-cfg").await.unwrap(), Some(t));
}

async fn each_nested_cap_holds_under_200_way_concurrency(s: Arc<dyn Store>) {
    // 200 holds of 0.01 at once on each tenant, the tenant budget far away:
    // - one application with a 0.5 budget: exactly 50 fit;
    // - four users with 0.3 each: exactly 30 each;
    // - both levels and a 0.9 model budget at once: no level is passed.
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{}", i % 4);
            let app_only = nested(
                &format!("a{i}"),
                "nest-app",
                SONNET,
                ("app-a", Some("0.5")),
                (&user, None),
            );
            let user_only = nested(
                &format!("u{i}"),
                "nest-user",
                SONNET,
                ("app-a", None),
                (&user, Some("0.3")),
            );
            let mut all = nested(
                &format!("m{i}"),
                "nest-all",
                if i % 3 == 0 { HAIKU } else { SONNET },
                (
                    if i % 2 == 0 { "app-a" } else { "app-b" },
                    (i % 2 == 0).then_some("0.6"),
                ),
                (&user, Some("0.35")),
            );
            if all.model_id == SONNET {
                all.model_budget_usd = Some(d("0.9"));
            }
            let out = [
                s.reserve(&app_only, d("100")).await.expect("reserve"),
                s.reserve(&user_only, d("100")).await.expect("reserve"),
                s.reserve(&all, d("100")).await.expect("reserve"),
            ];
            (i, out, all)
        }));
    }
    let (mut apps, mut users) = (0, [0u32; 4]);
    let mut admitted_all = Vec::new();
    for t in tasks {
        let (i, [a, u, m], all) = t.await.unwrap();
        match a {
            ReserveOutcome::Admitted => apps += 1,
            ReserveOutcome::ScopeInsufficient { scope, .. } => {
                assert_eq!(
                    (scope.level, scope.id.as_str()),
                    (Level::Application, "app-a")
                )
            }
            other => panic!("a{i}: {other:?}"),
        }
        match u {
            ReserveOutcome::Admitted => users[i % 4] += 1,
            ReserveOutcome::ScopeInsufficient { scope, .. } => {
                assert_eq!(scope.level, Level::User, "u{i}");
                assert_eq!(scope.id, format!("u{}", i % 4));
            }
            other => panic!("u{i}: {other:?}"),
        }
        match m {
            ReserveOutcome::Admitted => admitted_all.push(all),
            ReserveOutcome::ScopeInsufficient { .. } => {}
            other => panic!("m{i}: {other:?}"),
        }
    }
    assert_eq!(apps, 50);
    assert_eq!(users, [30; 4]);
    let b = bal(&s, "nest-app").await;
    assert_eq!(b.by_application["app-a"].limit.reserved_usd, d("0.5"));
    assert_eq!(b.by_application["app-a"].limit.budget_usd, d("0.5"));
    assert_eq!(b.totals.reserved_usd, d("0.5"));
    assert!(b.by_user.is_empty(), "{:?}", b.by_user);
    assert_scope_identity(&b);
    let b = bal(&s, "nest-user").await;
    assert_eq!(b.totals.reserved_usd, d("1.2"));
    for u in 0..4 {
        assert_eq!(b.by_user[&format!("u{u}")].limit.reserved_usd, d("0.3"));
    }
    assert!(b.by_application.is_empty());
    assert_scope_identity(&b);

    // The mixed tenant: every row's `reserved` is exactly the sum of the holds
    // admitted under it, and within its budget.
    let b = bal(&s, "nest-all").await;
    let sum = |f: &dyn Fn(&Hold) -> bool| -> Decimal {
        admitted_all
            .iter()
            .filter(|h| f(h))
            .map(|h| h.hold_usd)
            .sum()
    };
    assert_eq!(b.totals.reserved_usd, sum(&|_| true));
    assert_eq!(
        b.by_application["app-a"].limit.reserved_usd,
        sum(&|h| h.attribution.application_id.as_deref() == Some("app-a"))
    );
    assert!(
        !b.by_application.contains_key("app-b"),
        "app-b has no budget: no row"
    );
    for u in 0..4 {
        let id = format!("u{u}");
        assert_eq!(
            b.by_user[&id].limit.reserved_usd,
            sum(&|h| h.attribution.user_id.as_deref() == Some(id.as_str())),
            "{id}"
        );
    }
    assert_eq!(
        b.model_limits[SONNET].reserved_usd,
        sum(&|h| h.model_id == SONNET)
    );
    assert!(b.model_limits[SONNET].reserved_usd <= d("0.9"));
    assert_identity(&b);
    assert_model_identity(&b);
    assert_scope_identity(&b);
    // The user caps alone (4 × 0.35) refuse at least 60 of the 200.
    assert!(admitted_all.len() <= 140, "{}", admitted_all.len());
}

async fn nested_levels_stay_exact_through_commits_releases_and_expiry(s: Arc<dyn Store>) {
    // 200 holds of 0.01 by two applications (0.8 each) and five users (0.3
    // each): admitted ones are committed, released or left to expire, all at
    // once. Every level's row ends with reserved 0 and spent = the sum of its
    // commits' costs.
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let app = if i % 2 == 0 { "app-x" } else { "app-y" };
            let user = format!("v{}", i % 5);
            let mut h = nested(
                &format!("n{i}"),
                "nest-exact",
                SONNET,
                (app, Some("0.8")),
                (&user, Some("0.3")),
            );
            h.expires_at_ms = if i % 7 == 0 { T0 + 10 } else { T0 + 600_000 };
            match s.reserve(&h, d("100")).await.expect("reserve") {
                ReserveOutcome::Admitted => {}
                ReserveOutcome::ScopeInsufficient { .. } => return None,
                other => panic!("n{i}: {other:?}"),
            }
            if i % 7 == 0 {
                return None; // left to expire
            }
            if i % 3 == 0 {
                assert!(s.release(&h.request_id, T0 + 1).await.expect("release"));
                return None;
            }
            let u = Usage {
                input_tokens: 100 + i as u64,
                output_tokens: 10 + (i % 11) as u64,
                cache_read_input_tokens: 0,
                cache_write_input_tokens: 0,
            };
            match s
                .commit(&h.request_id, &u, false, T0 + 2)
                .await
                .expect("commit")
            {
                CommitApplied::Committed { cost, scopes, .. } => {
                    let named: Vec<String> = scopes.iter().map(|t| t.scope.scope()).collect();
                    assert_eq!(named, vec![format!("app:{app}"), format!("user:{user}")]);
                    for t in &scopes {
                        assert!(t.spent_usd + t.reserved_usd <= t.scope.budget_usd, "{t:?}");
                    }
                    Some((app, user, cost))
                }
                other => panic!("n{i}: {other:?}"),
            }
        }));
    }
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(t.await.unwrap());
    }
    assert!(!committed.is_empty());
    s.expire_holds(T0 + 1_000).await.unwrap();
    let b = bal(&s, "nest-exact").await;
    let total: Decimal = committed.iter().map(|c| c.2).sum();
    assert_eq!(b.totals.counters.spent_usd, total);
    assert_eq!(b.totals.reserved_usd, Decimal::ZERO);
    // Cost and count of the commits under one application or user.
    let charged = |under: &dyn Fn(&(&str, String, Decimal)) -> bool| {
        let mine = committed.iter().filter(|c| under(c));
        (
            mine.clone().map(|c| c.2).sum::<Decimal>(),
            mine.count() as u64,
        )
    };
    for app in ["app-x", "app-y"] {
        let r = &b.by_application[app];
        assert_eq!(r.limit.reserved_usd, Decimal::ZERO, "{app}");
        let want = charged(&|c| c.0 == app);
        assert_eq!((r.counters.spent_usd, r.counters.requests), want, "{app}");
    }
    for u in 0..5 {
        let id = format!("v{u}");
        let r = &b.by_user[&id];
        assert_eq!(r.limit.reserved_usd, Decimal::ZERO, "{id}");
        let want = charged(&|c| c.1 == id);
        assert_eq!((r.counters.spent_usd, r.counters.requests), want, "{id}");
    }
    assert_identity(&b);
    assert_scope_identity(&b);
    let usage = s.usage(None, None).await.unwrap();
    let mine: Vec<_> = usage
        .iter()
        .filter(|u| u.tenant_id == "nest-exact")
        .collect();
    assert_eq!(mine.len(), committed.len());
}
