//! Budget leases on the gateway side: admit requests locally against budget the
//! sidecar already reserved for this worker, and decide when to top a lease up,
//! give budget back, or drop it. Plain Rust, no host calls; times are
//! milliseconds from the host clock, passed in.
//!
//! Accounting, per lease: the sidecar's `reserved` for the lease always equals
//! `headroom` here plus the holds of requests admitted from it whose commits the
//! sidecar has not applied yet. Admitting moves a hold out of `headroom`; a
//! request Bedrock did not charge gives its hold back to `headroom`; a commit
//! (sent later, carrying the hold) takes it out of the sidecar's `reserved`; a
//! renewal returns part of `headroom` and may add a grant. So the hard cap never
//! depends on timing, and each renewal is applied once (retried with its `seq`).

use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use tollgate_wire::api::{
    LeaseGrant, LeaseRenewal, LeaseTerms, RenewOutcome, RenewResult, Reservation,
};

/// What identifies the requests one lease may admit: the same credential, the
/// same model as named by the client, the same application attribution.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    /// A digest of the bearer key, or `jwt:`/`header:` + tenant id; never the key.
    pub credential: String,
    pub model: String,
    pub application: Option<String>,
}

/// Tunables (from the plugin configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// How often each lease is renewed (topped up, trimmed, re-validated).
    pub renew_interval_ms: u64,
    /// A lease aims to hold this many seconds of the worker's recent spend.
    pub target_secs: u64,
    /// Stop admitting from a lease this long after its last acknowledged grant
    /// or renewal (kept well below the sidecar's lease TTL, so a lease the
    /// sidecar may already have expired is never used).
    pub admit_window_ms: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    key: LeaseKey,
    terms: LeaseTerms,
    headroom: Decimal,
    /// Last renewal the sidecar answered (0 = the grant).
    seq: u64,
    /// A renewal sent (or to resend) and not answered yet.
    pending: Option<LeaseRenewal>,
    in_flight: bool,
    /// Admission stops after this (host ms).
    admit_until_ms: u64,
    next_renew_ms: u64,
    /// Holds admitted since the last renewal was sent: the recent spend rate.
    admitted_since_renew: Decimal,
    /// The largest single hold seen: the smallest useful top-up.
    largest_hold: Decimal,
    /// Tenant's available budget at the last grant or renewal.
    remaining_hint: Decimal,
    /// Closed by the sidecar or being drained: admit nothing more.
    closed: bool,
}

/// The request being admitted.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub request_id: &'a str,
    pub input_tokens_estimate: u64,
    pub requested_max_output: Option<u64>,
}

impl Entry {
    /// Moves the request's hold out of the headroom, if it fits.
    fn take(&mut self, ask: Ask<'_>) -> Option<Reservation> {
        let (max_out, hold) = self
            .terms
            .admit(ask.input_tokens_estimate, ask.requested_max_output)
            .ok()?;
        if hold > self.headroom {
            return None;
        }
        self.headroom -= hold;
        self.admitted_since_renew += hold;
        self.largest_hold = self.largest_hold.max(hold);
        let t = &self.terms;
        Some(Reservation {
            request_id: ask.request_id.to_owned(),
            tenant_id: t.tenant_id.clone(),
            application_id: t.application_id.clone(),
            model_id: t.model_id.clone(),
            target_model: t.target_model.clone(),
            max_output_tokens: max_out,
            hold_usd: hold,
            budget_remaining_usd: self.remaining_hint + self.headroom,
            rates: Some(t.rates),
            rate_limits: Vec::new(),
        })
    }
}

/// The outcome of [`LeaseBook::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Admitted locally; forward with this reservation.
    Local {
        lease_id: String,
        reservation: Reservation,
    },
    /// No usable lease: ask the sidecar. `ask_lease` tells whether to ask for
    /// a new lease (none exists or is being asked for) or only a one-request hold
    /// (a lease exists but cannot cover this request now).
    Remote { ask_lease: bool },
    /// The key's lease is live but short of this request's hold: send this
    /// renewal now (it asks for at least the shortfall), then admit again with
    /// `may_renew: false`. Keeps the request on its own lease, so it is never
    /// refused while its own lease still holds budget.
    Renew(LeaseRenewal),
    /// After a renewal, the lease still cannot hold the request: the tenant's
    /// budget cannot. `available` is what is left, lease headroom included.
    Short {
        tenant_id: String,
        available: Decimal,
        hold: Decimal,
    },
}

/// All leases of one Envoy worker (one Wasm VM).
#[derive(Debug, Default)]
pub struct LeaseBook {
    by_id: HashMap<String, Entry>,
    by_key: HashMap<LeaseKey, String>,
    /// Keys with a lease request on its way: others of the key ask per request.
    asking: HashSet<LeaseKey>,
}

impl LeaseBook {
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Admits a request locally when a live lease of its key can hold it.
    pub fn admit(&mut self, key: &LeaseKey, ask: Ask<'_>, now_ms: u64, may_renew: bool) -> Admit {
        let Some(id) = self.by_key.get(key).cloned() else {
            let first = self.asking.insert(key.clone());
            return Admit::Remote { ask_lease: first };
        };
        let Some(e) = self.by_id.get_mut(&id) else {
            self.by_key.remove(key);
            return Admit::Remote { ask_lease: true };
        };
        if e.closed || now_ms >= e.admit_until_ms {
            return Admit::Remote { ask_lease: false };
        }
        if let Some(reservation) = e.take(ask) {
            return Admit::Local {
                lease_id: id,
                reservation,
            };
        }
        let Ok((_, hold)) = e
            .terms
            .admit(ask.input_tokens_estimate, ask.requested_max_output)
        else {
            return Admit::Remote { ask_lease: false };
        };
        if !may_renew {
            return Admit::Short {
                tenant_id: e.terms.tenant_id.clone(),
                available: e.remaining_hint + e.headroom,
                hold,
            };
        }
        if e.in_flight || e.pending.is_some() {
            return Admit::Remote { ask_lease: false };
        }
        let shortfall = hold - e.headroom;
        let r = LeaseRenewal {
            lease_id: id,
            seq: e.seq + 1,
            return_usd: Decimal::ZERO,
            want_usd: (shortfall + e.admitted_since_renew).normalize(),
            min_usd: shortfall.normalize(),
        };
        e.pending = Some(r.clone());
        e.in_flight = true;
        Admit::Renew(r)
    }

    /// The sidecar answered a lease request of `key` (or refused it: `None`).
    pub fn lease_answered(&mut self, key: &LeaseKey) {
        self.asking.remove(key);
    }

    /// Records a new lease for `key` and admits the request that asked for it
    /// (the sidecar granted at least its hold). `None` if the grant cannot hold
    /// it after all (then nothing is recorded; the lease expires on the sidecar).
    pub fn insert_grant(
        &mut self,
        key: LeaseKey,
        grant: LeaseGrant,
        policy: &LeasePolicy,
        ask: Ask<'_>,
        now_ms: u64,
    ) -> Option<(String, Reservation)> {
        self.asking.remove(&key);
        // A lease already live for the key (another worker context raced us):
        // keep it, and give the new one back at its first renewal.
        let orphan = self.by_key.contains_key(&key);
        let id = grant.lease_id.clone();
        self.by_id.insert(
            id.clone(),
            Entry {
                key: key.clone(),
                terms: grant.terms,
                headroom: grant.granted_usd,
                seq: 0,
                pending: None,
                in_flight: false,
                admit_until_ms: now_ms
                    + policy
                        .admit_window_ms
                        .min(grant.ttl_ms.saturating_mul(2) / 3),
                next_renew_ms: now_ms + policy.renew_interval_ms,
                admitted_since_renew: Decimal::ZERO,
                largest_hold: Decimal::ZERO,
                remaining_hint: grant.budget_remaining_usd,
                closed: orphan,
            },
        );
        if !orphan {
            self.by_key.insert(key.clone(), id.clone());
        }
        let reservation = self.by_id.get_mut(&id)?.take(ask)?;
        Some((id, reservation))
    }

    /// Bedrock charged nothing for a request admitted from `lease_id`: its hold
    /// goes back to the lease (the sidecar still counts it there).
    pub fn give_back(&mut self, lease_id: &str, hold: Decimal) {
        if let Some(e) = self.by_id.get_mut(lease_id) {
            e.headroom += hold;
            e.admitted_since_renew = (e.admitted_since_renew - hold).max(Decimal::ZERO);
        }
    }

    /// Renewals to send now: due leases are topped up to `target_secs` of their
    /// recent spend, trimmed when they hold more, emptied when idle or closed.
    /// Unanswered renewals are resent unchanged (same `seq`).
    pub fn renewals_due(&mut self, policy: &LeasePolicy, now_ms: u64) -> Vec<LeaseRenewal> {
        let mut out = Vec::new();
        for (id, e) in &mut self.by_id {
            if e.in_flight || (e.pending.is_none() && now_ms < e.next_renew_ms) {
                continue;
            }
            if let Some(p) = &e.pending {
                e.in_flight = true;
                out.push(p.clone());
                continue;
            }
            // Since the last answered renewal (due one interval after it).
            let elapsed_ms = now_ms.saturating_sub(e.next_renew_ms) + policy.renew_interval_ms;
            // Spend per second × target seconds.
            let target = if e.closed {
                Decimal::ZERO
            } else {
                (e.admitted_since_renew * Decimal::from(policy.target_secs * 1000)
                    / Decimal::from(elapsed_ms))
                .round_dp(9)
            };
            let (return_usd, want_usd) = if e.headroom > target {
                (e.headroom - target, Decimal::ZERO)
            } else {
                (Decimal::ZERO, target - e.headroom)
            };
            e.headroom -= return_usd;
            e.admitted_since_renew = Decimal::ZERO;
            let r = LeaseRenewal {
                lease_id: id.clone(),
                seq: e.seq + 1,
                return_usd: return_usd.normalize(),
                want_usd: want_usd.normalize(),
                min_usd: e.largest_hold.min(want_usd).normalize(),
            };
            e.pending = Some(r.clone());
            e.in_flight = true;
            out.push(r);
        }
        out
    }

    /// The sidecar's answers to renewals.
    pub fn renewed(&mut self, results: &[RenewResult], policy: &LeasePolicy, now_ms: u64) {
        for r in results {
            let Some(e) = self.by_id.get_mut(&r.lease_id) else {
                continue;
            };
            let Some(sent) = e.pending.take() else {
                continue;
            };
            e.in_flight = false;
            e.seq = sent.seq;
            e.next_renew_ms = now_ms + policy.renew_interval_ms;
            match &r.outcome {
                RenewOutcome::Renewed {
                    granted_usd,
                    ttl_ms,
                    budget_remaining_usd,
                } => {
                    e.headroom += *granted_usd;
                    e.remaining_hint = *budget_remaining_usd;
                    e.admit_until_ms =
                        now_ms + policy.admit_window_ms.min(ttl_ms.saturating_mul(2) / 3);
                    // Nothing held and nothing wanted: the lease is done.
                    if e.headroom.is_zero() && sent.want_usd.is_zero() {
                        e.closed = true;
                    }
                }
                RenewOutcome::Closed { .. } => {
                    // The sidecar stopped this lease from admitting; what it
                    // still holds for us beyond in-flight requests is our
                    // headroom, which the next tick gives back. A second
                    // "closed" means the lease is gone: nothing to return.
                    if e.closed {
                        e.headroom = Decimal::ZERO;
                    }
                    e.closed = true;
                    e.next_renew_ms = now_ms;
                }
            }
        }
        self.forget_closed();
    }

    /// Renewals that got no answer: resend them unchanged at the next tick.
    pub fn renew_failed(&mut self, lease_ids: &[String]) {
        for id in lease_ids {
            if let Some(e) = self.by_id.get_mut(id) {
                e.in_flight = false;
            }
        }
    }

    /// Closes the leases a key no longer may use and the leases of a tenant
    /// whose requests the sidecar refused (e.g. a revoked key seen per request).
    pub fn close_key(&mut self, key: &LeaseKey) {
        if let Some(id) = self.by_key.remove(key) {
            if let Some(e) = self.by_id.get_mut(&id) {
                e.closed = true;
                e.next_renew_ms = 0;
            }
        }
    }

    /// Shutdown: every lease gives all its headroom back now.
    pub fn drain(&mut self) -> Vec<LeaseRenewal> {
        let mut out = Vec::new();
        for (id, e) in &mut self.by_id {
            if e.in_flight {
                continue;
            }
            let r = e.pending.clone().unwrap_or_else(|| LeaseRenewal {
                lease_id: id.clone(),
                seq: e.seq + 1,
                return_usd: e.headroom.normalize(),
                want_usd: Decimal::ZERO,
                min_usd: Decimal::ZERO,
            });
            e.headroom = Decimal::ZERO;
            e.closed = true;
            out.push(r);
        }
        out
    }

    /// Drops leases that are closed and have nothing left to say.
    fn forget_closed(&mut self) {
        let done: Vec<String> = self
            .by_id
            .iter()
            .filter(|(_, e)| e.closed && e.pending.is_none() && e.headroom.is_zero())
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some(e) = self.by_id.remove(&id) {
                if self.by_key.get(&e.key) == Some(&id) {
                    self.by_key.remove(&e.key);
                }
            }
        }
    }

    /// Headroom held by this worker across its leases (for the gauge).
    pub fn headroom_usd(&self) -> Decimal {
        self.by_id.values().map(|e| e.headroom).sum()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::rates::Rates;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn policy() -> LeasePolicy {
        LeasePolicy {
            renew_interval_ms: 1000,
            target_secs: 2,
            admit_window_ms: 10_000,
        }
    }

    fn ask(request_id: &str, input: u64, max: Option<u64>) -> Ask<'_> {
        Ask {
            request_id,
            input_tokens_estimate: input,
            requested_max_output: max,
        }
    }

    fn key() -> LeaseKey {
        LeaseKey {
            credential: "k1".into(),
            model: "haiku".into(),
            application: None,
        }
    }

    /// $1 per 1M input and output tokens: a hold of 1000 + 1000 tokens is $0.002.
    fn grant(id: &str, usd: &str) -> LeaseGrant {
        LeaseGrant {
            lease_id: id.into(),
            terms: LeaseTerms {
                tenant_id: "acme".into(),
                application_id: None,
                model_id: "m".into(),
                target_model: "arn:m".into(),
                rates: Rates {
                    input: Decimal::ONE,
                    output: Decimal::ONE,
                    cache_read: Decimal::ONE,
                    cache_write: Decimal::ONE,
                },
                default_max_output_tokens: 1000,
                max_tokens_cap: None,
            },
            granted_usd: d(usd),
            ttl_ms: 30_000,
            budget_remaining_usd: d("10"),
        }
    }

    #[test]
    fn first_request_asks_for_a_lease_others_ask_per_request() {
        let mut b = LeaseBook::default();
        assert_eq!(
            b.admit(&key(), ask("r1", 1000, None), 0, true),
            Admit::Remote { ask_lease: true }
        );
        assert_eq!(
            b.admit(&key(), ask("r2", 1000, None), 0, true),
            Admit::Remote { ask_lease: false }
        );
        let (id, r) = b
            .insert_grant(
                key(),
                grant("L1", "0.01"),
                &policy(),
                ask("r1", 1000, None),
                0,
            )
            .unwrap();
        assert_eq!(id, "L1");
        assert_eq!(r.hold_usd, d("0.002"));
        assert_eq!(r.target_model, "arn:m");
        assert_eq!(b.headroom_usd(), d("0.008"));
    }

    #[test]
    fn admits_while_the_hold_fits_then_falls_back() {
        let mut b = LeaseBook::default();
        b.insert_grant(
            key(),
            grant("L1", "0.006"),
            &policy(),
            ask("r0", 1000, None),
            0,
        );
        let mut local = 0;
        for i in 0..5 {
            match b.admit(&key(), ask(&format!("r{i}"), 1000, None), 10, false) {
                Admit::Local { reservation, .. } => {
                    local += 1;
                    assert_eq!(reservation.max_output_tokens, 1000);
                }
                other => assert!(matches!(other, Admit::Short { .. }), "{other:?}"),
            }
        }
        // 0.006 holds three holds of 0.002, the first went to r0.
        assert_eq!(local, 2);
        assert_eq!(b.headroom_usd(), Decimal::ZERO);
        b.give_back("L1", d("0.002"));
        assert!(matches!(
            b.admit(&key(), ask("r9", 1000, None), 10, true),
            Admit::Local { .. }
        ));
    }

    #[test]
    fn a_short_lease_renews_inline_then_admits_or_reports_short() {
        let p = policy();
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "0.003"), &p, ask("r0", 1000, None), 0);
        // 0.001 left, a hold of 0.002 needs a renewal for at least 0.001.
        let Admit::Renew(r) = b.admit(&key(), ask("r1", 1000, None), 10, true) else {
            panic!("expected an inline renewal");
        };
        assert_eq!(
            (r.seq, r.min_usd, r.return_usd),
            (1, d("0.001"), Decimal::ZERO)
        );
        assert_eq!(r.want_usd, d("0.003"));
        b.renewed(
            &[RenewResult {
                lease_id: "L1".into(),
                outcome: RenewOutcome::Renewed {
                    granted_usd: d("0.001"),
                    ttl_ms: 30_000,
                    budget_remaining_usd: d("0.0005"),
                },
            }],
            &p,
            20,
        );
        assert!(matches!(
            b.admit(&key(), ask("r1", 1000, None), 20, false),
            Admit::Local { .. }
        ));
        // Nothing left, and the sidecar grants nothing: the request is short.
        let Admit::Renew(_) = b.admit(&key(), ask("r2", 1000, None), 30, true) else {
            panic!("expected an inline renewal");
        };
        b.renewed(
            &[RenewResult {
                lease_id: "L1".into(),
                outcome: RenewOutcome::Renewed {
                    granted_usd: Decimal::ZERO,
                    ttl_ms: 30_000,
                    budget_remaining_usd: d("0.0005"),
                },
            }],
            &p,
            40,
        );
        assert_eq!(
            b.admit(&key(), ask("r2", 1000, None), 40, false),
            Admit::Short {
                tenant_id: "acme".into(),
                available: d("0.0005"),
                hold: d("0.002")
            }
        );
    }

    #[test]
    fn a_lease_stops_admitting_after_its_window() {
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "1"), &policy(), ask("r0", 1000, None), 0);
        assert!(matches!(
            b.admit(&key(), ask("r1", 1, Some(1)), 9_999, true),
            Admit::Local { .. }
        ));
        assert_eq!(
            b.admit(&key(), ask("r2", 1, Some(1)), 10_000, true),
            Admit::Remote { ask_lease: false }
        );
    }

    #[test]
    fn renewal_tops_up_to_recent_spend_and_is_resent_unchanged() {
        let p = policy();
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "0.004"), &p, ask("r0", 1000, None), 0);
        assert!(b.renewals_due(&p, 500).is_empty(), "not due yet");
        let due = b.renewals_due(&p, 1000);
        assert_eq!(due.len(), 1);
        // Spent 0.002 in 1 s; 2 s worth is 0.004; 0.002 headroom → want 0.002.
        assert_eq!(due[0].seq, 1);
        assert_eq!(due[0].return_usd, Decimal::ZERO);
        assert_eq!(due[0].want_usd, d("0.002"));
        assert!(b.renewals_due(&p, 1100).is_empty(), "in flight");
        b.renew_failed(&["L1".to_string()]);
        let again = b.renewals_due(&p, 1200);
        assert_eq!(again, due, "a retry carries the same seq and amounts");
        b.renewed(
            &[RenewResult {
                lease_id: "L1".into(),
                outcome: RenewOutcome::Renewed {
                    granted_usd: d("0.002"),
                    ttl_ms: 30_000,
                    budget_remaining_usd: d("5"),
                },
            }],
            &p,
            1300,
        );
        assert_eq!(b.headroom_usd(), d("0.004"));
        // Idle for a second: everything goes back.
        let idle = b.renewals_due(&p, 2300);
        assert_eq!(idle[0].seq, 2);
        assert_eq!(idle[0].return_usd, d("0.004"));
        assert_eq!(idle[0].want_usd, Decimal::ZERO);
        assert_eq!(b.headroom_usd(), Decimal::ZERO);
        b.renewed(
            &[RenewResult {
                lease_id: "L1".into(),
                outcome: RenewOutcome::Renewed {
                    granted_usd: Decimal::ZERO,
                    ttl_ms: 30_000,
                    budget_remaining_usd: d("5"),
                },
            }],
            &p,
            2400,
        );
        assert!(b.is_empty(), "an empty idle lease is forgotten");
        assert_eq!(
            b.admit(&key(), ask("r5", 1, Some(1)), 2500, true),
            Admit::Remote { ask_lease: true }
        );
    }

    #[test]
    fn closed_leases_admit_nothing() {
        let p = policy();
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "1"), &p, ask("r0", 1, Some(1)), 0);
        let due = b.renewals_due(&p, 1000);
        let closed = |b: &mut LeaseBook, at| {
            b.renewed(
                &[RenewResult {
                    lease_id: "L1".into(),
                    outcome: RenewOutcome::Closed {
                        reason: "key revoked".into(),
                    },
                }],
                &p,
                at,
            )
        };
        assert_eq!(due[0].want_usd, Decimal::ZERO, "idle");
        closed(&mut b, 1001);
        // Whatever headroom is left goes back at once, then the lease is gone.
        assert_eq!(
            b.admit(&key(), ask("r1", 1, Some(1)), 1002, true),
            Admit::Remote { ask_lease: false }
        );
        let back = b.renewals_due(&p, 1002);
        assert!(back.is_empty() || back[0].want_usd.is_zero());
        closed(&mut b, 1003);
        assert!(b.is_empty());
        assert_eq!(
            b.admit(&key(), ask("r1", 1, Some(1)), 1002, true),
            Admit::Remote { ask_lease: true }
        );
    }

    #[test]
    fn drain_returns_all_headroom() {
        let p = policy();
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "1"), &p, ask("r0", 1000, None), 0);
        let out = b.drain();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].return_usd, d("0.998"));
        assert_eq!(out[0].want_usd, Decimal::ZERO);
        assert_eq!(b.headroom_usd(), Decimal::ZERO);
    }

    #[test]
    fn a_raced_second_lease_is_given_back() {
        let p = policy();
        let mut b = LeaseBook::default();
        b.insert_grant(key(), grant("L1", "1"), &p, ask("r0", 1, Some(1)), 0);
        let (id, _) = b
            .insert_grant(key(), grant("L2", "1"), &p, ask("r1", 1, Some(1)), 0)
            .unwrap();
        assert_eq!(id, "L2");
        match b.admit(&key(), ask("r2", 1, Some(1)), 1, true) {
            Admit::Local { lease_id, .. } => assert_eq!(lease_id, "L1"),
            other => panic!("{other:?}"),
        }
        let due = b.renewals_due(&p, 1000);
        let l2 = due.iter().find(|r| r.lease_id == "L2").unwrap();
        assert_eq!(l2.want_usd, Decimal::ZERO);
        assert_eq!(l2.return_usd, d("0.999998"));
    }
}
