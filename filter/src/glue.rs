//! The proxy-wasm layer: Envoy callbacks in, calls to the pure modules, host calls
//! out. Nothing here decides policy.
//!
//! Settlements (commit / release) must survive the HTTP stream that produced them:
//! Envoy cancels a context's outstanding calls when the context is destroyed. So
//! the stream enqueues them on a shared queue and the root context ships them to
//! the sidecar, in batches, retrying with backoff until the sidecar acknowledges.
//!
//! Admission is local when it can be: each worker's root keeps budget leases
//! (`lease::LeaseBook`, shared with the streams of the same VM — one thread, so a
//! `RefCell`), renews them on its tick, and a stream asks the sidecar only when no
//! lease can hold its request.

use crate::attributes;
use crate::config::{FailureMode, FilterConfig};
use crate::identity;
use crate::lease::{Admit, Ask, LeaseBook, LeaseKey, LeasePolicy};
use crate::reply::{self, LocalReply, BUDGET_REMAINING_HEADER, REQUEST_ID_HEADER};
use crate::request::{self, RequestFacts};
use crate::route::{self, BedrockRoute, RouteError};
use crate::settle::{settle, Queued, QueuedKind, ResponseOutcome, Settlement};
use crate::usage::{self, StreamMeter};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime};
use tollgate_wire::api::{
    self, Attribution, Credential, LeaseWant, LeasedAdmission, RenewBatch, RenewResponse,
    Reservation, ReserveRequest, ReserveResponse, SelfRequest, SelfResponse,
};

const QUEUE_NAME: &str = "tollgate.settlements";
/// Settlement flushes and lease renewals are driven from this tick.
const TICK: Duration = Duration::from_millis(200);
/// The Envoy environment variable (exposed to the VM with `vm_config.
/// environment_variables.host_env_keys`) holding the sidecar data-plane token.
const FILTER_TOKEN_ENV: &str = "TOLLGATE_FILTER_TOKEN";
const FILTER_TOKEN_HEADER: &str = "x-tollgate-filter-token";
const METADATA_HEADER: &str = "x-amzn-bedrock-request-metadata";
const MAX_BACKOFF: Duration = Duration::from_secs(30);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        log::error!("tollgate filter panicked: {info}");
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Counters exported under Envoy's `wasmcustom` stats.
#[derive(Debug, Default, Clone, Copy)]
struct Metrics {
    allowed: u32,
    denied: u32,
    rejected: u32,
    sidecar_errors: u32,
    committed: u32,
    estimated: u32,
    released: u32,
    retries: u32,
    dropped: u32,
    pending: u32,
    failed_open: u32,
    reserve_ms: u32,
    admitted_locally: u32,
    lease_renewals: u32,
    leases: u32,
}

impl Metrics {
    fn define() -> Self {
        let c = |name: &str| hostcalls::define_metric(MetricType::Counter, name).unwrap_or(0);
        Self {
            allowed: c("tollgate.requests.allowed"),
            denied: c("tollgate.requests.denied"),
            rejected: c("tollgate.requests.rejected"),
            sidecar_errors: c("tollgate.requests.sidecar_error"),
            committed: c("tollgate.settlements.committed"),
            estimated: c("tollgate.settlements.estimated"),
            released: c("tollgate.settlements.released"),
            retries: c("tollgate.settlements.retries"),
            dropped: c("tollgate.settlements.dropped"),
            failed_open: c("tollgate.requests.failed_open"),
            reserve_ms: hostcalls::define_metric(MetricType::Histogram, "tollgate.reserve_ms")
                .unwrap_or(0),
            pending: hostcalls::define_metric(MetricType::Gauge, "tollgate.settlements.pending")
                .unwrap_or(0),
            admitted_locally: c("tollgate.requests.admitted_locally"),
            lease_renewals: c("tollgate.leases.renewals"),
            leases: hostcalls::define_metric(MetricType::Gauge, "tollgate.leases.active")
                .unwrap_or(0),
        }
    }

    fn inc(id: u32) {
        Self::add(id, 1);
    }

    fn add(id: u32, n: i64) {
        if id != 0 && n != 0 {
            let _ = hostcalls::increment_metric(id, n);
        }
    }

    fn set(id: u32, v: u64) {
        if id != 0 {
            let _ = hostcalls::record_metric(id, v);
        }
    }
}

struct Shared {
    config: FilterConfig,
    policy: LeasePolicy,
    queue_id: u32,
    metrics: Metrics,
    leases: RefCell<LeaseBook>,
    /// Sent as `x-tollgate-filter-token` on every sidecar call.
    filter_token: Option<String>,
}

impl Shared {
    /// One call to the sidecar's data plane, from whichever context is current
    /// (its answer comes back to that context).
    fn call_sidecar(&self, path: &str, body: &[u8], timeout_ms: u64) -> Result<u32, String> {
        self.call_sidecar_for(None, path, body, timeout_ms)
    }

    /// [`Self::call_sidecar`] on behalf of one request: its id goes along as
    /// `x-tollgate-request-id`, so the sidecar's log lines for the call carry it.
    fn call_sidecar_for(
        &self,
        request_id: Option<&str>,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, String> {
        let mut headers = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", self.config.sidecar_authority.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(t) = &self.filter_token {
            headers.push((FILTER_TOKEN_HEADER, t.as_str()));
        }
        if let Some(id) = request_id {
            headers.push((crate::reply::REQUEST_ID_HEADER, id));
        }
        hostcalls::dispatch_http_call(
            &self.config.sidecar_cluster,
            headers,
            Some(body),
            vec![],
            Duration::from_millis(timeout_ms),
        )
        .map_err(|e| format!("{e:?}"))
    }

    fn now_ms() -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    }
}

#[derive(Default)]
struct Root {
    shared: Option<Rc<Shared>>,
    pending: VecDeque<Queued>,
    in_flight: HashMap<u32, Vec<Queued>>,
    /// Renewal calls on their way, by token: the leases they carry.
    renewing: HashMap<u32, Vec<String>>,
    retry_at: Option<SystemTime>,
    backoff: Duration,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        // Give every lease's unused budget back (best effort: the sidecar's
        // TTL sweeper returns it anyway if this call does not make it).
        if let Some(shared) = self.shared.clone() {
            self.drain_queue();
            self.flush();
            let drained = shared.leases.borrow_mut().drain();
            self.send_renewals(&shared, drained);
        }
        true
    }

    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(ids) = self.renewing.remove(&token) {
            self.renewal_answered(&ids, body_size);
            return;
        }
        let Some(items) = self.in_flight.remove(&token) else {
            return;
        };
        let status = self.get_http_call_response_header(":status");
        if status.as_deref() == Some("200") {
            self.backoff = Duration::ZERO;
            self.retry_at = None;
            if let Some(s) = &self.shared {
                // One host call per counter, not per settlement.
                let (mut estimated, mut committed, mut released) = (0, 0, 0);
                for item in &items {
                    match item.kind {
                        QueuedKind::EstimatedCommit => estimated += 1,
                        QueuedKind::Commit => committed += 1,
                        QueuedKind::Release => released += 1,
                    }
                }
                Metrics::add(s.metrics.estimated, estimated);
                Metrics::add(s.metrics.committed, committed);
                Metrics::add(s.metrics.released, released);
            }
            self.flush();
        } else {
            log::warn!(
                "tollgate: sidecar answered {} to {} settlement(s); will retry",
                status.as_deref().unwrap_or("no status (timeout or reset)"),
                items.len()
            );
            for item in items.into_iter().rev() {
                self.pending.push_front(item);
            }
            self.schedule_retry();
        }
    }
}

impl Root {
    fn schedule_retry(&mut self) {
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF);
        self.retry_at = Some(self.get_current_time() + self.backoff);
        if let Some(s) = &self.shared {
            Metrics::inc(s.metrics.retries);
        }
    }

    fn drain_queue(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        while let Ok(Some(bytes)) = self.dequeue_shared_queue(shared.queue_id) {
            match Queued::from_message(&bytes) {
                Ok(s) if self.pending.len() < shared.config.max_pending_settlements => {
                    self.pending.push_back(s)
                }
                Ok(s) => {
                    log::error!(
                        "tollgate: settlement queue full ({} pending); dropping {:?} {}",
                        self.pending.len(),
                        s.kind,
                        String::from_utf8_lossy(&s.json)
                    );
                    Metrics::inc(shared.metrics.dropped);
                }
                Err(e) => log::error!("tollgate: unreadable settlement on queue: {e}"),
            }
        }
    }

    /// Ships pending settlements: commits in batches, releases one by one.
    fn flush(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if let Some(at) = self.retry_at {
            if self.get_current_time() < at {
                return;
            }
            self.retry_at = None;
        }
        // One settlement call at a time: what arrives meanwhile rides the next
        // batch, so the sidecar sees fewer, larger transactions under load.
        while !self.pending.is_empty() && self.in_flight.is_empty() {
            let batch: Vec<Queued> = match self.pending.front() {
                Some(q) if !q.is_commit() => self.pending.pop_front().into_iter().collect(),
                _ => {
                    let mut b = Vec::new();
                    while b.len() < shared.config.commit_batch_size
                        && self.pending.front().is_some_and(Queued::is_commit)
                    {
                        b.extend(self.pending.pop_front());
                    }
                    b
                }
            };
            // The streams encoded each settlement already: a release is sent as
            // it is, commits are joined into one `CommitBatch`.
            let (path, body) = match batch.as_slice() {
                [q] if !q.is_commit() => (api::RELEASE_PATH, q.json.clone()),
                _ => (api::COMMIT_PATH, Queued::commit_batch(&batch)),
            };
            match shared.call_sidecar(path, &body, shared.config.commit_timeout_ms) {
                Ok(token) => {
                    self.in_flight.insert(token, batch);
                }
                Err(e) => {
                    log::warn!("tollgate: cannot reach sidecar cluster for settlements: {e}");
                    for item in batch.into_iter().rev() {
                        self.pending.push_front(item);
                    }
                    self.schedule_retry();
                    break;
                }
            }
        }
        let in_flight: usize = self.in_flight.values().map(Vec::len).sum();
        Metrics::set(
            shared.metrics.pending,
            (self.pending.len() + in_flight) as u64,
        );
    }
}

impl Root {
    /// Sends the renewals that are due (or unanswered) in one call.
    fn renew(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let now = Shared::now_ms();
        let due = shared.leases.borrow_mut().renewals_due(&shared.policy, now);
        self.send_renewals(&shared, due);
        Metrics::set(shared.metrics.leases, shared.leases.borrow().len() as u64);
    }

    fn send_renewals(&mut self, shared: &Shared, due: Vec<api::LeaseRenewal>) {
        if due.is_empty() {
            return;
        }
        let ids: Vec<String> = due.iter().map(|r| r.lease_id.clone()).collect();
        let sent = serde_json::to_vec(&RenewBatch { leases: due })
            .map_err(|e| e.to_string())
            .and_then(|body| {
                shared.call_sidecar(
                    api::LEASE_RENEW_PATH,
                    &body,
                    shared.config.reserve_timeout_ms,
                )
            });
        match sent {
            Ok(token) => {
                self.renewing.insert(token, ids);
            }
            Err(e) => {
                log::warn!("tollgate: cannot send lease renewals: {e}");
                shared.leases.borrow_mut().renew_failed(&ids);
            }
        }
    }

    fn renewal_answered(&mut self, ids: &[String], body_size: usize) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let parsed = (status.as_deref() == Some("200"))
            .then(|| serde_json::from_slice::<RenewResponse>(&body).ok())
            .flatten();
        let mut book = shared.leases.borrow_mut();
        match parsed {
            Some(r) => {
                Metrics::inc(shared.metrics.lease_renewals);
                book.renewed(&r.results, &shared.policy, Shared::now_ms());
            }
            None => {
                log::warn!(
                    "tollgate: lease renewal answered {}; will retry",
                    status.as_deref().unwrap_or("nothing (timeout or reset)")
                );
                book.renew_failed(ids);
            }
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match FilterConfig::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("{e}");
                return false;
            }
        };
        let queue_id = self.register_shared_queue(QUEUE_NAME);
        self.set_tick_period(TICK);
        // Read from the VM's environment, never from the plugin configuration
        // (which /config_dump prints).
        let filter_token = std::env::var(FILTER_TOKEN_ENV)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        if filter_token.is_none() {
            log::warn!(
                "tollgate: {FILTER_TOKEN_ENV} is not set in the Wasm VM's environment; the sidecar will refuse data-plane calls unless it runs with an open data plane"
            );
        }
        self.shared = Some(Rc::new(Shared {
            policy: config.lease_policy(),
            config,
            queue_id,
            metrics: Metrics::define(),
            leases: RefCell::new(LeaseBook::default()),
            filter_token,
        }));
        true
    }

    fn on_queue_ready(&mut self, _: u32) {
        self.drain_queue();
        self.flush();
    }

    fn on_tick(&mut self) {
        self.drain_queue();
        self.flush();
        self.renew();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(Exchange::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the request body.
    Reading,
    /// Waiting for the sidecar's reserve answer.
    Reserving,
    /// Waiting for the sidecar's answer to `GET /tollgate/v1/self`.
    SelfLookup,
    /// Sent upstream under a hold.
    Forwarded,
    /// Answered locally, or passed through untouched.
    Done,
}

enum ResponseMeter {
    None,
    Json { copy: Vec<u8>, overflow: bool },
    Stream(StreamMeter),
}

/// One client request through the gateway.
struct Exchange {
    shared: Rc<Shared>,
    request_id: String,
    phase: Phase,
    route: Option<BedrockRoute>,
    credential: Credential,
    attribution: Attribution,
    /// The user named by a verified JWT claim (`jwt.user_claim`): wins over
    /// what the request says. `Some(None)`: the token names no user.
    jwt_user: Option<Option<String>>,
    body: Vec<u8>,
    facts: Option<RequestFacts>,
    reserve_token: Option<u32>,
    /// When the reserve call left, for the latency histogram.
    reserve_sent: Option<SystemTime>,
    /// The reserve as sent; kept to charge a request forwarded without a hold.
    reserve_request: Option<ReserveRequest>,
    reservation: Option<Reservation>,
    status: Option<u16>,
    header_usage: Option<api::Usage>,
    meter: ResponseMeter,
    settled: bool,
    /// Which lease this request's credential, model and application share.
    lease_key: Option<LeaseKey>,
    /// Set when admitted from a lease (locally, or by the grant it asked for).
    lease_id: Option<String>,
    /// This request asked the sidecar for the key's first lease.
    asking_lease: bool,
    /// The lease this request is renewing inline (its hold did not fit).
    inline_renewal: Option<String>,
    /// The client's `x-amzn-bedrock-*` headers (lowercase names): billing
    /// options and request metadata are judged with the body.
    bedrock_headers: Vec<(String, String)>,
}

impl Exchange {
    fn new(shared: Rc<Shared>) -> Self {
        Self {
            shared,
            request_id: new_request_id(),
            phase: Phase::Reading,
            route: None,
            credential: Credential::None,
            attribution: Attribution::default(),
            jwt_user: None,
            body: Vec::new(),
            facts: None,
            reserve_token: None,
            reserve_sent: None,
            reserve_request: None,
            reservation: None,
            status: None,
            header_usage: None,
            meter: ResponseMeter::None,
            settled: false,
            lease_key: None,
            lease_id: None,
            asking_lease: false,
            inline_renewal: None,
            bedrock_headers: Vec::new(),
        }
    }

    /// The sidecar granted the lease this request asked for: record it, and
    /// admit the request from it.
    fn leased(&mut self, grant: api::LeaseGrant) {
        self.asking_lease = false;
        let (Some(key), Some(facts)) = (self.lease_key.clone(), self.facts.as_ref()) else {
            self.sidecar_failed("lease granted to a request that did not ask", false);
            return;
        };
        let admitted = self.shared.leases.borrow_mut().insert_grant(
            key,
            grant,
            &self.shared.policy,
            Ask {
                request_id: &self.request_id,
                input_tokens_estimate: facts.input_tokens_estimate,
                requested_max_output: facts.max_output_tokens,
            },
            Shared::now_ms(),
        );
        match admitted {
            Some((lease_id, reservation)) => {
                self.lease_id = Some(lease_id);
                self.forward(reservation, false);
            }
            None => {
                self.sidecar_failed("the granted lease cannot hold the request", false);
            }
        }
    }

    fn reply(&mut self, r: LocalReply) -> Action {
        let headers = r.headers(&self.request_id);
        let body = r.body();
        self.send_http_response(
            r.status,
            headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            Some(&body),
        );
        self.phase = Phase::Done;
        Action::Pause
    }

    fn reject(&mut self, r: LocalReply) -> Action {
        Metrics::inc(self.shared.metrics.rejected);
        log::info!(
            "tollgate {}: rejected {} {}",
            self.request_id,
            r.status,
            r.message
        );
        self.reply(r)
    }

    fn jwt_tenant(&self) -> Option<String> {
        let jwt = self.shared.config.jwt.as_ref()?;
        self.jwt_claim(&jwt.tenant_claim)
    }

    fn jwt_claim(&self, claim: &str) -> Option<String> {
        let jwt = self.shared.config.jwt.as_ref()?;
        let bytes = self.get_property(vec![
            "metadata",
            "filter_metadata",
            "envoy.filters.http.jwt_authn",
            &jwt.payload_in_metadata,
            claim,
        ])?;
        String::from_utf8(bytes).ok()
    }

    /// The user a JWT-authenticated request's token names, when the gateway
    /// takes users from a claim; `Err` for a value Bedrock could not log.
    fn pinned_jwt_user(&self) -> Result<Option<Option<String>>, LocalReply> {
        let claim = match (&self.credential, &self.shared.config.jwt) {
            (Credential::Jwt { .. }, Some(jwt)) => match &jwt.user_claim {
                Some(c) => c,
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        match self.jwt_claim(claim) {
            Some(u) if !request::valid_metadata_value(&u) => Err(LocalReply::validation(
                400,
                format!("the token's {claim} claim is not a valid user id: at most 256 characters of [a-zA-Z0-9 :_@$#=/+,-.]"),
            )),
            user => Ok(Some(user.filter(|u| !u.is_empty()))),
        }
    }

    fn start_reserve(&mut self, body: Vec<u8>) -> Action {
        let Some(route) = self.route.clone() else {
            return Action::Continue;
        };
        let mut facts = match RequestFacts::read(route.operation, &route.model, &body) {
            Ok(f) => f,
            Err(e) => return self.reject(LocalReply::validation(400, e.to_string())),
        };
        let header = |name: &str| {
            self.bedrock_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if let Err(e) =
            request::billing_options(header, &facts.billing, &self.shared.config.billing_options)
        {
            return self.reject(LocalReply::validation(400, e.to_string()));
        }
        // The client's own X-Amzn-Bedrock-Request-Metadata counts like body
        // requestMetadata; the gateway's merged metadata replaces it upstream.
        facts.metadata = match request::client_metadata(header(METADATA_HEADER), &facts.metadata) {
            Ok(md) => md,
            Err(e) => return self.reject(LocalReply::validation(400, e.to_string())),
        };
        identity::merge_body_attribution(&mut self.attribution, &facts.metadata);
        if let Some(user) = &self.jwt_user {
            self.attribution.user_id = user.clone();
        }
        if let Err(e) =
            request::check_metadata_limits(&facts.metadata, &self.attribution, &self.request_id)
        {
            return self.reject(LocalReply::validation(400, e.to_string()));
        }
        let req = ReserveRequest {
            request_id: self.request_id.clone(),
            credential: self.credential.clone(),
            operation: route.operation,
            model: route.model.clone(),
            attribution: self.attribution.clone(),
            input_tokens_estimate: facts.input_tokens_estimate,
            max_output_tokens: facts.max_output_tokens,
            lease: None,
        };
        self.body = body;
        self.facts = Some(facts);
        self.reserve_request = Some(req);
        self.lease_key = self.lease_key(&route);
        if let Some(action) = self.admit_from_lease(true, true) {
            return action;
        }
        self.send_reserve(true)
    }

    /// Tries the key's lease. `None`: no lease can decide, ask the sidecar.
    fn admit_from_lease(&mut self, may_renew: bool, in_body: bool) -> Option<Action> {
        let (key, facts) = (self.lease_key.clone()?, self.facts.as_ref()?);
        let ask = Ask {
            request_id: &self.request_id,
            input_tokens_estimate: facts.input_tokens_estimate,
            requested_max_output: facts.max_output_tokens,
        };
        let admitted =
            self.shared
                .leases
                .borrow_mut()
                .admit(&key, ask, Shared::now_ms(), may_renew);
        match admitted {
            Admit::Local {
                lease_id,
                reservation,
            } => {
                self.lease_id = Some(lease_id);
                Metrics::inc(self.shared.metrics.admitted_locally);
                Some(self.forward(reservation, in_body))
            }
            Admit::Remote { ask_lease } => {
                if ask_lease {
                    if let Some(req) = &mut self.reserve_request {
                        req.lease = Some(LeaseWant {
                            holds: self.shared.config.lease_initial_holds,
                        });
                        self.asking_lease = true;
                    }
                }
                None
            }
            Admit::Renew(renewal) => {
                let id = renewal.lease_id.clone();
                let sent = serde_json::to_vec(&RenewBatch {
                    leases: vec![renewal],
                })
                .map_err(|e| e.to_string())
                .and_then(|body| {
                    self.shared.call_sidecar_for(
                        Some(&self.request_id),
                        api::LEASE_RENEW_PATH,
                        &body,
                        self.shared.config.reserve_timeout_ms,
                    )
                });
                match sent {
                    Ok(token) => {
                        self.reserve_token = Some(token);
                        self.reserve_sent = Some(self.get_current_time());
                        self.inline_renewal = Some(id);
                        self.phase = Phase::Reserving;
                        Some(Action::Pause)
                    }
                    Err(e) => {
                        self.shared.leases.borrow_mut().renew_failed(&[id]);
                        Some(self.sidecar_failed(&format!("dispatch failed: {e}"), in_body))
                    }
                }
            }
            Admit::Short {
                tenant_id,
                available,
                hold,
            } => {
                Metrics::inc(self.shared.metrics.denied);
                let r = LocalReply::new(
                    402,
                    "BudgetExceededException",
                    format!(
                        "Budget exhausted for tenant {tenant_id}: available ${}, this request needs up to ${}",
                        available.max(rust_decimal::Decimal::ZERO).normalize(),
                        hold.normalize()
                    ),
                );
                Some(self.reply(r))
            }
        }
    }

    /// The answer to an inline renewal: admit from the topped-up lease, or
    /// refuse when even the renewed lease cannot hold the request.
    fn inline_renewed(&mut self, lease_id: String, ok: Option<RenewResponse>) {
        let Some(answer) = ok else {
            self.shared.leases.borrow_mut().renew_failed(&[lease_id]);
            self.sidecar_failed("lease renewal failed", false);
            return;
        };
        Metrics::inc(self.shared.metrics.lease_renewals);
        self.shared.leases.borrow_mut().renewed(
            &answer.results,
            &self.shared.policy,
            Shared::now_ms(),
        );
        if self.admit_from_lease(false, false).is_none() {
            // The lease was closed meanwhile: ask for this request alone.
            self.send_reserve(false);
        }
    }

    /// Sends the reserve (`self.reserve_request`) to the sidecar.
    fn send_reserve(&mut self, in_body: bool) -> Action {
        let json = match self.reserve_request.as_ref().map(serde_json::to_vec) {
            Some(Ok(json)) => json,
            _ => {
                self.lease_not_granted();
                return self.reject(LocalReply::unavailable("cannot encode reserve request"));
            }
        };
        match self.shared.call_sidecar_for(
            Some(&self.request_id),
            api::RESERVE_PATH,
            &json,
            self.shared.config.reserve_timeout_ms,
        ) {
            Ok(token) => {
                self.reserve_token = Some(token);
                self.reserve_sent = Some(self.get_current_time());
                self.phase = Phase::Reserving;
                Action::Pause
            }
            Err(e) => self.sidecar_failed(&format!("dispatch failed: {e}"), in_body),
        }
    }

    /// `GET /tollgate/v1/self`: the sidecar authenticates the credential and
    /// answers with its tenant's own balance, which goes back as the reply.
    fn ask_self(&mut self) -> Action {
        if let Credential::Sigv4(proof) = &mut self.credential {
            proof.payload_sha256 = identity::sha256_hex(&[]);
        }
        let req = SelfRequest {
            request_id: self.request_id.clone(),
            credential: self.credential.clone(),
        };
        let Ok(json) = serde_json::to_vec(&req) else {
            return self.reject(LocalReply::unavailable("cannot encode the self request"));
        };
        match self.shared.call_sidecar_for(
            Some(&self.request_id),
            api::SELF_PATH,
            &json,
            self.shared.config.reserve_timeout_ms,
        ) {
            Ok(token) => {
                self.reserve_token = Some(token);
                self.phase = Phase::SelfLookup;
                Action::Pause
            }
            Err(e) => {
                log::warn!(
                    "tollgate {}: self lookup dispatch failed: {e}",
                    self.request_id
                );
                self.reject(LocalReply::unavailable(
                    "Tollgate's budget service is unavailable; try again.",
                ))
            }
        }
    }

    fn self_answered(&mut self, status: Option<&str>, body: &[u8]) {
        let answer = (status == Some("200"))
            .then(|| serde_json::from_slice::<SelfResponse>(body).ok())
            .flatten();
        match answer {
            Some(SelfResponse::Allow {
                view,
                budget_remaining_usd,
            }) => {
                let body = view.to_string();
                let remaining = budget_remaining_usd.to_string();
                self.send_http_response(
                    200,
                    vec![
                        ("content-type", "application/json"),
                        ("cache-control", "no-store"),
                        (REQUEST_ID_HEADER, &self.request_id),
                        (BUDGET_REMAINING_HEADER, &remaining),
                    ],
                    Some(body.as_bytes()),
                );
                self.phase = Phase::Done;
            }
            Some(SelfResponse::Deny(d)) => {
                let mut r = LocalReply::new(u32::from(d.status), &d.error_type, d.message);
                r.retry_after_secs = d.retry_after_secs;
                self.reject(r);
            }
            None => {
                log::warn!(
                    "tollgate {}: self lookup answered {}",
                    self.request_id,
                    status.unwrap_or("nothing (timeout or reset)")
                );
                self.reject(LocalReply::unavailable(
                    "Tollgate's budget service is unavailable; try again.",
                ));
            }
        }
    }

    /// Requests of this credential, model and application share a lease.
    /// SigV4 signatures cover each request, so those are checked one by one.
    fn lease_key(&self, route: &BedrockRoute) -> Option<LeaseKey> {
        if !self.shared.config.leases {
            return None;
        }
        let credential = match &self.credential {
            Credential::Bearer { key } => {
                format!("bearer:{}", identity::sha256_hex(key.as_bytes()))
            }
            Credential::Jwt { tenant_id } => format!("jwt:{tenant_id}"),
            Credential::TrustedHeader { tenant_id } => format!("header:{tenant_id}"),
            Credential::Sigv4(_) | Credential::None => return None,
        };
        Some(LeaseKey {
            credential,
            model: route.model.clone(),
            application: self.attribution.application_id.clone(),
        })
    }

    /// The lease this request asked for will not come: let the next one ask.
    fn lease_not_granted(&mut self) {
        if std::mem::take(&mut self.asking_lease) {
            if let Some(key) = &self.lease_key {
                self.shared.leases.borrow_mut().lease_answered(key);
            }
        }
    }

    /// `in_body`: called from the body callback (return Continue) rather than from
    /// the sidecar's answer (resume explicitly).
    fn sidecar_failed(&mut self, why: &str, in_body: bool) -> Action {
        self.lease_not_granted();
        Metrics::inc(self.shared.metrics.sidecar_errors);
        log::warn!(
            "tollgate {}: budget sidecar unavailable: {why}",
            self.request_id
        );
        match self.shared.config.failure_mode {
            FailureMode::Closed => self.reply(LocalReply::unavailable(
                "Tollgate budget service is unavailable; the request was not sent to Bedrock. Retry shortly.",
            )),
            FailureMode::Open => self.forward_unreserved(in_body),
        }
    }

    /// `failure_mode: open`: forward as the client sent it (credentials already
    /// stripped), and charge it when the sidecar is back. Nothing can be checked
    /// now but a SigV4 signature's age, which keeps replays to AWS's own window.
    fn forward_unreserved(&mut self, in_body: bool) -> Action {
        if let Credential::Sigv4(proof) = &self.credential {
            let now = self
                .get_current_time()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            if !identity::sigv4_fresh(proof, now) {
                return self.reject(LocalReply::new(
                    403,
                    "InvalidSignatureException",
                    "Signature expired: X-Amz-Date is more than 15 minutes from the gateway's clock",
                ));
            }
        }
        if matches!(self.credential, Credential::None) {
            return self.reject(LocalReply::new(
                401,
                "UnrecognizedClientException",
                "Missing credential: send Authorization: Bearer <key> (AWS_BEARER_TOKEN_BEDROCK)",
            ));
        }
        Metrics::inc(self.shared.metrics.failed_open);
        log::warn!(
            "tollgate {}: forwarded without a hold (failure_mode open)",
            self.request_id
        );
        self.body = Vec::new();
        self.phase = Phase::Forwarded;
        if in_body {
            return Action::Continue;
        }
        self.resume_http_request();
        Action::Pause
    }

    /// Rewrites and lets the request go. `in_body`: admitted from the body
    /// callback (return Continue) rather than from the sidecar's answer.
    fn forward(&mut self, r: Reservation, in_body: bool) -> Action {
        let Some(route) = self.route.clone() else {
            return Action::Continue;
        };
        let client_md = self
            .facts
            .as_ref()
            .map(|f| f.metadata.clone())
            .unwrap_or_default();
        let merged = request::merge_metadata(
            &client_md,
            &request::gateway_metadata(&self.attribution, &self.request_id, Some(&r)),
        );
        let rewritten = merged.and_then(|md| {
            // The resolved base model decides which output-limit field is clamped.
            let body = match &self.facts {
                Some(f) => f.rewrite(
                    &self.body,
                    route.operation,
                    &r.model_id,
                    r.max_output_tokens,
                    Some(&md),
                ),
                None => request::rewrite(
                    route.operation,
                    &r.model_id,
                    &self.body,
                    r.max_output_tokens,
                    Some(&md),
                ),
            }?;
            let header = if route.operation.is_converse() {
                None
            } else {
                Some(request::metadata_header(&md)?)
            };
            Ok((body, header))
        });
        let (body, md_header) = match rewritten {
            Ok(x) => x,
            Err(e) => {
                self.reservation = Some(r);
                self.give_back(format!("request rewrite failed: {e}"));
                return self.reject(LocalReply::validation(400, e.to_string()));
            }
        };
        self.set_http_request_body(0, self.body.len(), &body);
        self.set_http_request_header(
            ":path",
            Some(&BedrockRoute::upstream_path(
                &r.target_model,
                route.operation,
            )),
        );
        self.set_http_request_header("content-length", Some(&body.len().to_string()));
        // Converse carries the merged metadata in the body; a client's header
        // must not reach Bedrock beside it.
        // (Nothing to remove when the client sent none: skip the host call.)
        if md_header.is_some()
            || self
                .bedrock_headers
                .iter()
                .any(|(k, _)| k == METADATA_HEADER)
        {
            self.set_http_request_header(METADATA_HEADER, md_header.as_deref());
        }
        self.body = Vec::new();
        if self.shared.config.filter_state {
            self.publish(attributes::admitted(&r));
        }
        self.reservation = Some(r);
        self.phase = Phase::Forwarded;
        Metrics::inc(self.shared.metrics.allowed);
        if in_body {
            return Action::Continue;
        }
        self.resume_http_request();
        Action::Pause
    }

    /// Bedrock charged nothing: a leased hold goes back to its lease here, a
    /// sidecar hold is released there.
    fn give_back(&mut self, reason: String) {
        let Some(r) = &self.reservation else { return };
        match &self.lease_id {
            Some(lease_id) => self
                .shared
                .leases
                .borrow_mut()
                .give_back(lease_id, r.hold_usd),
            None => self.enqueue(Settlement::Release {
                request_id: self.request_id.clone(),
                reason,
            }),
        }
    }

    /// Sets filter state `wasm.<name>` for each attribute (see `attributes`).
    fn publish(&self, attrs: Vec<(&'static str, String)>) {
        for (name, value) in attrs {
            self.set_property(vec![name], Some(value.as_bytes()));
        }
    }

    fn enqueue(&self, s: Settlement) {
        match Queued::new(&s) {
            Ok(q) => {
                if let Err(e) =
                    self.enqueue_shared_queue(self.shared.queue_id, Some(&q.to_message()))
                {
                    log::error!(
                        "tollgate {}: cannot queue settlement {s:?}: {e:?}",
                        self.request_id
                    );
                    Metrics::inc(self.shared.metrics.dropped);
                }
            }
            Err(e) => log::error!(
                "tollgate {}: cannot encode settlement: {e}",
                self.request_id
            ),
        }
    }

    fn settle_once(&mut self) {
        if self.settled || self.phase != Phase::Forwarded {
            return;
        }
        self.settled = true;
        let Some(route) = &self.route else { return };
        let mut outcome = ResponseOutcome {
            status: self.status,
            ..Default::default()
        };
        match &self.meter {
            ResponseMeter::Stream(m) => {
                let o = m.observation();
                outcome.usage = o.usage;
                outcome.final_usage = o.final_usage;
                outcome.estimated_output_tokens = o.estimated_output_tokens();
                if let Some(e) = &o.corrupt {
                    log::warn!(
                        "tollgate {}: response stream corrupt ({e}); usage estimated",
                        self.request_id
                    );
                }
            }
            ResponseMeter::Json { copy, overflow } => {
                let from_body = (!overflow)
                    .then(|| usage::body_usage(route.operation, copy))
                    .flatten();
                outcome.usage = self.header_usage.or(from_body);
                outcome.final_usage = outcome.usage.is_some();
                // Only an estimated commit reads the estimate (see `settle`):
                // skip the scan when Bedrock's usage is there.
                if !outcome.final_usage {
                    outcome.estimated_output_tokens = usage::estimate_json_output_tokens(copy);
                }
            }
            ResponseMeter::None => {}
        }
        let input_estimate = self.facts.as_ref().map_or(0, |f| f.input_tokens_estimate);
        let max_output = (self.reservation.as_ref().map(|r| r.max_output_tokens))
            .or_else(|| self.facts.as_ref().and_then(|f| f.max_output_tokens));
        let mut s = settle(&self.request_id, input_estimate, max_output, &outcome);
        if let (true, Some(r)) = (self.shared.config.filter_state, &self.reservation) {
            self.publish(attributes::settled(&s, r, input_estimate));
        }
        if let (Some(lease_id), Some(r)) = (&self.lease_id, &self.reservation) {
            match &mut s {
                Settlement::Commit(c) => {
                    c.lease = Some(LeasedAdmission {
                        lease_id: lease_id.clone(),
                        hold_usd: r.hold_usd,
                        max_output_tokens: r.max_output_tokens,
                        input_tokens_estimate: input_estimate,
                        attribution: self.attribution.clone(),
                    })
                }
                Settlement::Release { reason, .. } => {
                    let reason = std::mem::take(reason);
                    self.give_back(reason);
                    return;
                }
            }
        }
        if self.reservation.is_none() {
            // Forwarded without a hold: a commit must carry the request; a
            // release has nothing to give back.
            match &mut s {
                Settlement::Commit(c) => c.unreserved = self.reserve_request.take().map(Box::new),
                Settlement::Release { .. } => return,
            }
        }
        log::debug!("tollgate {}: settling {s:?}", self.request_id);
        self.enqueue(s);
    }
}

impl Context for Exchange {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if self.reserve_token == Some(token) && self.phase == Phase::SelfLookup {
            self.reserve_token = None;
            let status = self.get_http_call_response_header(":status");
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            self.self_answered(status.as_deref(), &body);
            return;
        }
        if self.reserve_token != Some(token) || self.phase != Phase::Reserving {
            return;
        }
        self.reserve_token = None;
        if let Some(sent) = self.reserve_sent.take() {
            let ms = self
                .get_current_time()
                .duration_since(sent)
                .map_or(0, |d| d.as_millis());
            Metrics::set(self.shared.metrics.reserve_ms, ms as u64);
        }
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        if let Some(lease_id) = self.inline_renewal.take() {
            let ok = (status.as_deref() == Some("200"))
                .then(|| serde_json::from_slice::<RenewResponse>(&body).ok())
                .flatten();
            self.inline_renewed(lease_id, ok);
            return;
        }
        if status.as_deref() != Some("200") {
            self.sidecar_failed(
                &format!(
                    "reserve answered {}: {}",
                    status.as_deref().unwrap_or("nothing (timeout or reset)"),
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                false,
            );
            return;
        }
        match serde_json::from_slice::<ReserveResponse>(&body) {
            Ok(ReserveResponse::Allow(r)) => {
                self.lease_not_granted();
                self.forward(r, false);
            }
            Ok(ReserveResponse::Lease(grant)) => self.leased(grant),
            Ok(ReserveResponse::Deny(d)) => {
                self.lease_not_granted();
                Metrics::inc(self.shared.metrics.denied);
                log::info!(
                    "tollgate {}: denied {} {}",
                    self.request_id,
                    d.status,
                    d.error_type
                );
                let mut r = LocalReply::new(u32::from(d.status), &d.error_type, d.message);
                r.retry_after_secs = d.retry_after_secs;
                r.rate_limits = d.rate_limits;
                self.reply(r);
            }
            Err(e) => {
                self.sidecar_failed(&format!("unreadable reserve answer: {e}"), false);
            }
        }
    }
}

impl HttpContext for Exchange {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if self.shared.config.filter_state {
            self.publish(attributes::received(&self.request_id));
        }
        // One host call for every header, pseudo-headers included, rather than
        // one per header read.
        let headers = self.get_http_request_headers();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let method = header(":method").unwrap_or_default().to_owned();
        let path = header(":path").unwrap_or_default().to_owned();
        let self_lookup = route::is_self_path(&path);
        if self_lookup && !method.eq_ignore_ascii_case("GET") {
            return self.reject(LocalReply::validation(
                405,
                format!("{} answers GET only", api::GATEWAY_SELF_PATH),
            ));
        }
        let route = match BedrockRoute::parse(&method, &path) {
            _ if self_lookup => None,
            Ok(r) => Some(r),
            Err(e @ (RouteError::UnknownPath(_) | RouteError::UnsupportedOperation(_))) => {
                return self.reject(LocalReply::new(404, "ValidationException", e.to_string()))
            }
            Err(e) => return self.reject(LocalReply::validation(400, e.to_string())),
        };
        self.route = route;
        self.attribution = match identity::attribution(header) {
            Ok(a) => a,
            Err(r) => return self.reject(r),
        };
        let trusted = self
            .shared
            .config
            .trusted_tenant_header
            .then(|| header(identity::TENANT_HEADER))
            .flatten();
        let received = identity::ReceivedRequest {
            method: &method,
            path: &path,
            headers: &headers,
        };
        self.credential = match identity::credential(&received, self.jwt_tenant(), trusted) {
            Ok(c) => c,
            Err(r) => return self.reject(r),
        };
        // Read here so a bad claim is refused before the body; it replaces the
        // request's user once the body's metadata is merged (start_reserve).
        self.jwt_user = match self.pinned_jwt_user() {
            Ok(u) => u,
            Err(r) => return self.reject(r),
        };
        if self_lookup {
            return self.ask_self();
        }
        for (name, value) in &headers {
            if identity::is_stripped_header(name) {
                self.set_http_request_header(name, None);
            }
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("x-amzn-bedrock-") {
                self.bedrock_headers.push((lower, value.clone()));
            }
        }
        if end_of_stream {
            return self.reject(LocalReply::validation(400, "request body is required"));
        }
        // Headers stay paused until the sidecar admits the request; this needs
        // `allow_on_headers_stop_iteration: true` in the plugin config.
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Reading {
            return Action::Continue;
        }
        if body_size > self.shared.config.max_request_body_bytes {
            return self.reject(LocalReply::validation(
                413,
                format!(
                    "request body exceeds {} bytes",
                    self.shared.config.max_request_body_bytes
                ),
            ));
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if let Credential::Sigv4(proof) = &mut self.credential {
            proof.payload_sha256 = identity::sha256_hex(&body);
        }
        self.start_reserve(body)
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        // Bedrock Runtime requests never end with trailers. Without this, a
        // request ending in trailers would end its body here instead of in
        // `on_http_request_body`, and so reach Bedrock unreserved and unmetered.
        if self.phase == Phase::Reading {
            return self.reject(LocalReply::validation(
                400,
                "Request trailers are not supported by Bedrock Runtime; send the request body without trailers.",
            ));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Forwarded {
            return Action::Continue;
        }
        let status = self
            .get_http_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok());
        self.status = status;
        self.set_http_response_header(REQUEST_ID_HEADER, Some(&self.request_id));
        if let Some(r) = &self.reservation {
            self.set_http_response_header(
                BUDGET_REMAINING_HEADER,
                Some(&r.budget_remaining_usd.to_string()),
            );
            for (name, value) in reply::rate_limit_headers(&r.rate_limits) {
                self.set_http_response_header(name, Some(&value));
            }
        }
        if let (Some(route), Some(200..=299)) = (&self.route, status) {
            self.meter = if route.operation.is_streaming() {
                ResponseMeter::Stream(StreamMeter::new(route.operation))
            } else {
                if !route.operation.is_converse() {
                    self.header_usage = usage::header_usage(|n| self.get_http_response_header(n));
                }
                ResponseMeter::Json {
                    copy: Vec::new(),
                    overflow: false,
                }
            };
        }
        if end_of_stream {
            self.settle_once();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.phase != Phase::Forwarded || self.settled {
            return Action::Continue;
        }
        // Returning Continue each time means each call sees only the new bytes.
        if body_size > 0 {
            let chunk = self
                .get_http_response_body(0, body_size)
                .unwrap_or_default();
            let limit = self.shared.config.max_response_copy_bytes;
            match &mut self.meter {
                ResponseMeter::Stream(m) => m.push(&chunk),
                ResponseMeter::Json { copy, overflow } => {
                    if copy.len() + chunk.len() <= limit {
                        copy.extend_from_slice(&chunk);
                    } else {
                        *overflow = true;
                    }
                }
                ResponseMeter::None => {}
            }
        }
        if end_of_stream {
            self.settle_once();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        // Client abort, upstream reset: settle from what was seen.
        self.settle_once();
    }
}

/// 128 random bits; the sidecar's idempotency key, so never client-chosen.
fn new_request_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // Fall back to time plus a counter; still unique within this VM.
        thread_local!(static N: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
        let n = N.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b[..8].copy_from_slice(&t.to_be_bytes());
        b[8..].copy_from_slice(&n.to_be_bytes());
    }
    format!("tg-{}", identity::hex(&b))
}
