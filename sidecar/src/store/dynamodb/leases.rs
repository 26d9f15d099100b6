//! Budget leases on DynamoDB.
//!
//! A lease's budget is counted on the period's `ALL` row like a hold's, but its
//! amount changes over its life (renewals add and return, leased commits take
//! out). So the `ALL` row carries, per open lease, one map attribute
//! `lease:<leaseId>` = `{r, s, g, x, v}`: the amount counted in `reserved` (`r`),
//! the last renewal applied (`s`, 0 for the grant) and what it granted (`g`), the
//! expiry (`x`) and a version (`v`, +1 on every change). **The entry is the
//! truth**; every change of a lease's money is one conditional `UpdateItem` of the
//! `ALL` row that rewrites the entry (conditioned on its version) and moves
//! `reserved`/`available` by the same amount in the same update. So there is no
//! state where the lease and the tenant's `reserved` disagree, and the hard cap
//! `spent + reserved ≤ budget` holds at every instant, for any number of sidecars.
//!
//! The `TollgateLeases` item holds the lease's terms (what the gateway admits
//! requests with), its state, and a mirror of the entry (`reservedUsd`, `seq`,
//! `lastGrantedUsd`, `expiresAt`, `ver`) written after each change, only ever
//! forward (`ver < :v`). A stale mirror is harmless: readers use the entry, and
//! the sweeper re-reads the entry before expiring.
//!
//! - **grant**: (G1) read the `ALL` row, size the grant from its `available`;
//!   (G2) put the lease item `pending` (`attribute_not_exists(leaseId)`); (G3)
//!   `SET lease:<id> = {r: g, s: 0, …} ADD reserved :g, available -:g` if
//!   `available >= :g AND attribute_not_exists(lease:<id>)`, re-read and re-size
//!   on a conditional failure (bounded); a grant that no longer fits deletes the
//!   pending item; (G4) `pending → open`. *Crash after G2/G3*: the `pending`
//!   lease sits in the sweep index at its expiry; the sweeper gives the entry back
//!   (if G3 applied) and marks it `expired`.
//! - **renew** (`seq`): an entry whose `s` is `seq` is replayed (its `g`), an
//!   older `seq` is refused; otherwise one update sets the entry to `s = seq`
//!   (conditioned on the version read, so of two racing renewals exactly one
//!   applies and the other then replays it), returning `min(return, r)` and
//!   adding `sizing.grant(available + returned)` (condition `available >= :d`
//!   when the net change is positive). A renewal wanting nothing that leaves
//!   nothing held removes the entry instead (the lease is released).
//! - **leased commits**: idempotent per request id through the hold machinery:
//!   each claim is a `PutItem` of a `committing` hold item carrying `leaseId`
//!   (`attribute_not_exists(requestId)`); then the claimed commits of one lease
//!   in a batch are one settlement group (see `commit`): C2 charges the `ALL` row
//!   once for the group and takes the sum of its holds out of the entry as a
//!   delta (`#e.r >= :h AND NOT contains(settling, :idN)…`, `v + 1`), so that
//!   batches of one lease commute; `min(holds, r)` with a versioned rewrite when
//!   the lease holds less; or late-style when the lease is closed (no entry).
//! - **close** (renewal of an ended period, expiry): give-back first — `REMOVE
//!   lease:<id> ADD reserved -:r, available :r` if `#e.#v = :v` — then the item
//!   `open|pending → released|expired`. A crash between leaves an open item with
//!   no entry: every reader treats it as closed and finishes the transition.

use super::commit::{Charge, COUNTER_ADD};
use super::*;

/// The lease's entry on the `ALL` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    reserved: Decimal,
    seq: u64,
    granted: Decimal,
    expires_at_ms: i64,
    ver: u64,
}

impl Entry {
    fn value(&self) -> AttributeValue {
        AttributeValue::M(
            [
                ("r", n(self.reserved)),
                ("s", nu(self.seq)),
                ("g", n(self.granted)),
                ("x", ni(self.expires_at_ms)),
                ("v", nu(self.ver)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        )
    }

    /// The entry of `lease_id` on an `ALL` row, if the lease is counted there.
    fn read(row: &Item, table: &str, lease_id: &str) -> Result<Option<Self>> {
        let attr = entry_attr(lease_id);
        match row.get(&attr) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::M(m)) => {
                let g = Get::new(m, table);
                Ok(Some(Self {
                    reserved: g.dec("r")?,
                    seq: g.u64("s")?,
                    granted: g.dec("g")?,
                    expires_at_ms: g.i64("x")?,
                    ver: g.u64("v")?,
                }))
            }
            Some(_) => Err(corrupt(table, &attr, "not a map")),
        }
    }
}

fn entry_attr(lease_id: &str) -> String {
    format!("lease:{lease_id}")
}

/// Lease item states (`pending` until the grant is counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LState {
    Pending,
    Open,
    Released,
    Expired,
}

impl LState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Open => "open",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "pending" => Self::Pending,
            "open" => Self::Open,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    fn public(self) -> HoldState {
        match self {
            Self::Pending | Self::Open => HoldState::Open,
            Self::Released => HoldState::Released,
            Self::Expired => HoldState::Expired,
        }
    }
}

/// A lease item as read back.
struct DLease {
    lease: LeaseRecord,
    state: LState,
}

impl DLease {
    fn tenant(&self) -> &str {
        &self.lease.terms.tenant_id
    }

    fn id(&self) -> &str {
        &self.lease.lease_id
    }

    /// The record as the trait reports it, with the entry's numbers when counted.
    fn record(mut self, entry: Option<Entry>) -> LeaseRecord {
        if let Some(e) = entry {
            self.lease.reserved_usd = e.reserved;
            self.lease.seq = e.seq;
            self.lease.last_granted_usd = e.granted;
            self.lease.expires_at_ms = e.expires_at_ms;
        }
        self.lease.state = self.state.public();
        self.lease
    }
}

fn lease_item(l: &LeaseRecord) -> Item {
    let t = &l.terms;
    let mut item = Item::new();
    item.insert("leaseId".into(), s(&l.lease_id));
    item.insert("tenantId".into(), s(&t.tenant_id));
    item.insert("period".into(), s(&l.period));
    put_opt(&mut item, "applicationId", t.application_id.clone().map(s));
    item.insert("modelId".into(), s(&t.model_id));
    item.insert("targetModel".into(), s(&t.target_model));
    put_rates(&mut item, &t.rates);
    item.insert(
        "defaultMaxOutputTokens".into(),
        nu(t.default_max_output_tokens),
    );
    put_opt(&mut item, "maxTokensCap", t.max_tokens_cap.map(nu));
    item.insert("credentialRef".into(), s(&l.credential_ref));
    item.insert("requestedModel".into(), s(&l.requested_model));
    item.insert("reservedUsd".into(), n(Decimal::ZERO));
    item.insert("seq".into(), nu(0));
    item.insert("lastGrantedUsd".into(), n(Decimal::ZERO));
    item.insert("ver".into(), nu(0));
    item.insert("createdAt".into(), ni(l.created_at_ms));
    item.insert("expiresAt".into(), ni(l.expires_at_ms));
    item.insert("state".into(), s(LState::Pending.as_str()));
    item.insert("sweepShard".into(), s(shard(&l.lease_id)));
    item.insert("sweepAt".into(), ni(l.expires_at_ms));
    item
}

fn lease_from_item(item: &Item, table: &str) -> Result<DLease> {
    let g = Get::new(item, table);
    let state_s = g.s("state")?;
    let state = LState::parse(&state_s)
        .ok_or_else(|| corrupt(table, "state", &format!("unknown lease state {state_s:?}")))?;
    Ok(DLease {
        lease: LeaseRecord {
            lease_id: g.s("leaseId")?,
            period: g.s("period")?,
            terms: LeaseTerms {
                tenant_id: g.s("tenantId")?,
                application_id: g.opt_s("applicationId")?,
                model_id: g.s("modelId")?,
                target_model: g.s("targetModel")?,
                rates: rates_from(&g)?,
                default_max_output_tokens: g.u64("defaultMaxOutputTokens")?,
                max_tokens_cap: g.opt_u64("maxTokensCap")?,
            },
            credential_ref: g.s("credentialRef")?,
            requested_model: g.s("requestedModel")?,
            reserved_usd: g.dec("reservedUsd")?,
            seq: g.u64("seq")?,
            last_granted_usd: g.dec("lastGrantedUsd")?,
            created_at_ms: g.i64("createdAt")?,
            expires_at_ms: g.i64("expiresAt")?,
            state: state.public(),
        },
        state,
    })
}

/// The names every entry update uses.
const ENTRY_NAMES: [(&str, &str); 2] = [("#reserved", "reserved"), ("#available", "available")];

impl DynamoStore {
    async fn raw_lease(&self, lease_id: &str) -> Result<Option<DLease>> {
        self.get(&self.t.leases, vec![("leaseId", s(lease_id))])
            .await?
            .map(|i| lease_from_item(&i, &self.t.leases))
            .transpose()
    }

    /// One conditional update of the `ALL` row: `SET`/`REMOVE` the lease's entry
    /// and move `reserved` by `delta` (and `available` by `−delta`). `None` when
    /// the condition did not hold.
    async fn move_entry(
        &self,
        lease: &LeaseRecord,
        entry: Option<&Entry>,
        delta: Decimal,
        condition: &str,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>> {
        let attr = entry_attr(&lease.lease_id);
        let update = match entry {
            Some(e) => {
                values.push((":entry", e.value()));
                "SET #e = :entry ADD #reserved :d, #available :nd"
            }
            None => "REMOVE #e ADD #reserved :d, #available :nd",
        };
        values.push((":d", n(delta)));
        values.push((":nd", n(-delta)));
        let mut nm = ENTRY_NAMES.to_vec();
        nm.push(("#e", attr.as_str()));
        nm.push(("#v", "v"));
        let exprs = [update, condition];
        applied(
            self.update(
                &self.t.budgets,
                self.all_key(&lease.terms.tenant_id, &lease.period),
                update,
                Some(condition),
                &used(&exprs, &nm),
                values,
            )
            .await,
        )
    }

    /// Writes the entry's numbers to the lease item, only forward.
    async fn mirror_lease(&self, lease_id: &str, e: &Entry) -> Result<()> {
        applied(
            self.update(
                &self.t.leases,
                vec![("leaseId", s(lease_id))],
                "SET reservedUsd = :r, #seq = :s, lastGrantedUsd = :g, expiresAt = :x, \
                 #sweepAt = :x, #ver = :v",
                Some("#state = :open AND #ver < :v"),
                &[
                    ("#seq", "seq"),
                    ("#sweepAt", "sweepAt"),
                    ("#ver", "ver"),
                    ("#state", "state"),
                ],
                vec![
                    (":r", n(e.reserved)),
                    (":s", nu(e.seq)),
                    (":g", n(e.granted)),
                    (":x", ni(e.expires_at_ms)),
                    (":v", nu(e.ver)),
                    (":open", s(LState::Open.as_str())),
                ],
            )
            .await,
        )?;
        Ok(())
    }

    /// Gives the lease's entry back (if still counted), then moves the item to
    /// `to`. `true` if this call made the transition.
    async fn close_lease(&self, l: &DLease, to: LState, now_ms: i64) -> Result<bool> {
        let (tenant, period, id) = (l.tenant(), &l.lease.period, l.id());
        let mut given_back = false;
        for _ in 0..MAX_ATTEMPTS {
            let Some(row) = self.get_all_row(tenant, period).await? else {
                given_back = true;
                break;
            };
            let Some(e) = Entry::read(&row, &self.t.budgets, id)? else {
                given_back = true;
                break;
            };
            let r = self
                .move_entry(
                    &l.lease,
                    None,
                    -e.reserved,
                    "#e.#v = :v",
                    vec![(":v", nu(e.ver))],
                )
                .await?;
            if r.is_some() {
                given_back = true;
                break;
            }
        }
        if !given_back {
            return Err(Error::Internal(format!(
                "lease {id}: too much contention on the budget row (transient; retry)"
            )));
        }
        let r = self
            .update(
                &self.t.leases,
                vec![("leaseId", s(id))],
                "SET #state = :to, reservedUsd = :zero, settledAt = :now \
                 REMOVE #sweepShard, #sweepAt",
                Some("#state IN (:open, :pending)"),
                &[
                    ("#state", "state"),
                    ("#sweepShard", "sweepShard"),
                    ("#sweepAt", "sweepAt"),
                ],
                vec![
                    (":to", s(to.as_str())),
                    (":zero", n(Decimal::ZERO)),
                    (":now", ni(now_ms)),
                    (":open", s(LState::Open.as_str())),
                    (":pending", s(LState::Pending.as_str())),
                ],
            )
            .await;
        Ok(applied(r)?.is_some())
    }

    pub(super) async fn grant_lease_impl(
        &self,
        lease: &LeaseRecord,
        sizing: &LeaseSizing,
        period_budget: Decimal,
    ) -> Result<LeaseOutcome> {
        let (tenant, period, id) = (&lease.terms.tenant_id, &lease.period, &lease.lease_id);
        let mut written = false;
        let mut outcome = None;
        for _ in 0..MAX_ATTEMPTS {
            // G1: size the grant from a consistent read of the row.
            let Some(row) = self.get_all_row(tenant, period).await? else {
                self.ensure_all_row(tenant, period, period_budget).await?;
                continue;
            };
            let t = totals_from_item(&row, &self.t.budgets, period)?;
            let available = Get::new(&row, &self.t.budgets).dec("available")?;
            let Some(granted) = sizing.grant(available) else {
                if written {
                    self.drop_pending_lease(lease, now_of(lease)).await?;
                }
                return Ok(LeaseOutcome::Insufficient {
                    available,
                    spent: t.counters.spent_usd,
                    budget: t.budget_usd,
                });
            };
            // G2: the lease item, unique per lease id.
            if !written {
                match applied(
                    self.put(&self.t.leases, lease_item(lease), Some("leaseId"))
                        .await,
                )? {
                    Some(()) => written = true,
                    None => return Err(Error::invalid(format!("lease {id} already exists"))),
                }
            }
            // G3: count it, if it still fits.
            let entry = Entry {
                reserved: granted,
                seq: 0,
                granted,
                expires_at_ms: lease.expires_at_ms,
                ver: 1,
            };
            let row = self
                .move_entry(
                    lease,
                    Some(&entry),
                    granted,
                    "#available >= :d AND attribute_not_exists(#e)",
                    vec![],
                )
                .await?;
            if let Some(row) = row {
                let remaining = Get::new(&row, &self.t.budgets).dec("available")?;
                outcome = Some((entry, remaining));
                break;
            }
        }
        let Some((entry, remaining)) = outcome else {
            if written {
                self.drop_pending_lease(lease, now_of(lease)).await?;
            }
            return Err(Error::Internal(format!(
                "lease {id}: too much contention on the budget row (transient; retry)"
            )));
        };
        // G4: pending → open, with the mirror.
        let r = self
            .update(
                &self.t.leases,
                vec![("leaseId", s(id))],
                "SET #state = :open, reservedUsd = :r, lastGrantedUsd = :r, #ver = :v",
                Some("#state = :pending"),
                &[("#state", "state"), ("#ver", "ver")],
                vec![
                    (":open", s(LState::Open.as_str())),
                    (":pending", s(LState::Pending.as_str())),
                    (":r", n(entry.reserved)),
                    (":v", nu(entry.ver)),
                ],
            )
            .await;
        if applied(r)?.is_none() {
            // Swept while we were counting it: the sweeper's give-back may have
            // run before our G3; give it back (a no-op if it did not).
            if let Some(l) = self.raw_lease(id).await? {
                self.close_lease(&l, LState::Expired, now_of(lease)).await?;
            }
            return Err(Error::Internal(format!(
                "lease {id} expired while being granted (transient; retry)"
            )));
        }
        Ok(LeaseOutcome::Granted {
            granted: entry.granted,
            remaining,
        })
    }

    /// Deletes a pending lease whose grant was refused (nothing is counted:
    /// G3 never applied for it).
    async fn drop_pending_lease(&self, lease: &LeaseRecord, now_ms: i64) -> Result<()> {
        let r = self
            .client
            .delete_item()
            .table_name(&self.t.leases)
            .key("leaseId", s(&lease.lease_id))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s(LState::Pending.as_str()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ddb_error("DeleteItem", &self.t.leases, e));
        if applied(r)?.is_none() {
            // Not pending any more (swept): make sure nothing stays counted.
            if let Some(l) = self.raw_lease(&lease.lease_id).await? {
                self.close_lease(&l, LState::Expired, now_ms).await?;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn renew_lease_impl(
        &self,
        lease_id: &str,
        seq: u64,
        return_usd: Decimal,
        sizing: &LeaseSizing,
        current_period: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<RenewApplied> {
        let closed = |reason: &str| {
            Ok(RenewApplied::Closed {
                reason: reason.to_string(),
            })
        };
        if return_usd < Decimal::ZERO {
            return Err(Error::invalid(
                "a lease renewal cannot return a negative amount",
            ));
        }
        let Some(l) = self.raw_lease(lease_id).await? else {
            return closed("unknown lease");
        };
        match l.state {
            LState::Pending => return closed("unknown lease"),
            LState::Released => return closed("lease was released"),
            LState::Expired => return closed("lease expired"),
            LState::Open => {}
        }
        if l.lease.period != current_period {
            self.close_lease(&l, LState::Released, now_ms).await?;
            return closed("budget period ended");
        }
        let (tenant, period) = (l.tenant(), l.lease.period.as_str());
        for _ in 0..MAX_ATTEMPTS {
            let row = self.get_all_row(tenant, period).await?;
            let entry = row
                .as_ref()
                .map(|r| Entry::read(r, &self.t.budgets, lease_id))
                .transpose()?
                .flatten();
            let (Some(row), Some(e)) = (row, entry) else {
                // Given back by a close that did not finish: finish it.
                self.close_lease(&l, LState::Released, now_ms).await?;
                return closed("lease was released");
            };
            let available = Get::new(&row, &self.t.budgets).dec("available")?;
            if seq == e.seq {
                self.mirror_lease(lease_id, &e).await?;
                return Ok(RenewApplied::Renewed {
                    granted: e.granted,
                    remaining: available,
                });
            }
            if seq < e.seq {
                return Err(Error::invalid(format!(
                    "lease {lease_id}: renewal {seq} is older than the last applied ({})",
                    e.seq
                )));
            }
            if e.expires_at_ms <= now_ms {
                self.close_lease(&l, LState::Expired, now_ms).await?;
                return closed("lease expired");
            }
            let returned = return_usd.min(e.reserved);
            let granted = sizing.grant(available + returned).unwrap_or(Decimal::ZERO);
            let delta = granted - returned;
            let next = Entry {
                reserved: e.reserved + delta,
                seq,
                granted,
                expires_at_ms,
                ver: e.ver + 1,
            };
            let cond = if delta > Decimal::ZERO {
                "#e.#v = :v AND #available >= :d"
            } else {
                "#e.#v = :v"
            };
            // Wanting nothing with nothing left: the renewal releases the lease
            // (the entry goes in the same update).
            let release = sizing.want <= Decimal::ZERO && next.reserved.is_zero();
            let kept = (!release).then_some(&next);
            let r = self
                .move_entry(&l.lease, kept, delta, cond, vec![(":v", nu(e.ver))])
                .await?;
            if let Some(row) = r {
                if release {
                    self.close_lease(&l, LState::Released, now_ms).await?;
                } else {
                    self.mirror_lease(lease_id, &next).await?;
                }
                return Ok(RenewApplied::Renewed {
                    granted,
                    remaining: Get::new(&row, &self.t.budgets).dec("available")?,
                });
            }
            // Another renewal or a commit changed the entry: re-read (a racing
            // renewal of the same seq is then replayed).
        }
        Err(Error::Internal(format!(
            "renew {lease_id}: too much contention on the budget row (transient; retry)"
        )))
    }

    pub(super) async fn get_lease_impl(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        let Some(l) = self.raw_lease(lease_id).await? else {
            return Ok(None);
        };
        let entry = match l.state {
            LState::Pending => return Ok(None),
            LState::Open => self
                .get_all_row(l.tenant(), &l.lease.period)
                .await?
                .map(|r| Entry::read(&r, &self.t.budgets, lease_id))
                .transpose()?
                .flatten(),
            LState::Released | LState::Expired => None,
        };
        Ok(Some(l.record(entry)))
    }

    /// Leased commits of one lease, charged as settlement groups (see
    /// `commit`): each request's claim is its own conditional `PutItem` (first
    /// writer wins, duplicates answer `Duplicate`), then the claimed ones share
    /// one update of the `ALL` row, one of the model row and `BatchWriteItem`s
    /// of usage records. Results are in the order of `commits`.
    pub(super) async fn commit_lease_group(
        &self,
        lease_id: &str,
        commits: &[&LeasedCommit],
        now_ms: i64,
    ) -> Result<Vec<Result<CommitApplied>>> {
        let Some(l) = self.raw_lease(lease_id).await? else {
            return Ok(commits.iter().map(|_| Ok(CommitApplied::Unknown)).collect());
        };
        if l.state == LState::Pending {
            return Ok(commits.iter().map(|_| Ok(CommitApplied::Unknown)).collect());
        }
        let mut out: Vec<Option<Result<CommitApplied>>> = commits.iter().map(|_| None).collect();
        // (index, hold, claim item, cost) of the requests still to claim.
        let mut to_claim = Vec::with_capacity(commits.len());
        for (i, c) in commits.iter().enumerate() {
            match leased_claim(&l, c, now_ms) {
                Ok((hold, item, cost)) => to_claim.push((i, hold, item, cost)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let mut claimed: Vec<(usize, Hold, Decimal, DHold)> = Vec::with_capacity(to_claim.len());
        for _ in 0..MAX_ATTEMPTS {
            if to_claim.is_empty() {
                break;
            }
            let puts =
                futures_util::future::join_all(to_claim.iter().map(|(_, _, item, _)| {
                    self.put(&self.t.holds, item.clone(), Some("requestId"))
                }))
                .await;
            let mut again = Vec::new();
            for ((i, hold, item, cost), put) in to_claim.into_iter().zip(puts) {
                if applied(put)?.is_some() {
                    let d = hold_from_item(&item, &self.t.holds)?;
                    claimed.push((i, hold, cost, d));
                    continue;
                }
                let c = commits[i];
                out[i] = match self.raw_hold(&c.request_id).await? {
                    None => {
                        again.push((i, hold, item, cost)); // gone between the two calls
                        continue;
                    }
                    Some(d) if matches!(d.state, DState::Committing | DState::Committed) => {
                        Some(Ok(CommitApplied::Duplicate { cost: d.cost }))
                    }
                    Some(_) => Some(Err(Error::invalid(format!(
                        "request {} has a reservation of its own; commit it without a lease",
                        c.request_id
                    )))),
                };
            }
            to_claim = again;
        }
        for (i, ..) in to_claim {
            out[i] = Some(Err(Error::Internal(format!(
                "commit {}: the hold kept changing (transient; retry)",
                commits[i].request_id
            ))));
        }
        for group in claimed.chunks(super::commit::MAX_GROUP) {
            let ds: Vec<&DHold> = group.iter().map(|(.., d)| d).collect();
            match self.finish_commits(&ds, now_ms).await {
                // Leased requests have no scoped budgets (never leased).
                Ok((totals, _)) => {
                    for (i, hold, cost, _) in group {
                        let c = commits[*i];
                        let mut hold = hold.clone();
                        hold.budget_remaining_usd = totals.available();
                        out[*i] = Some(Ok(CommitApplied::Committed {
                            cost: *cost,
                            capped: c.capped,
                            usage: c.usage,
                            hold: Box::new(hold),
                            totals: totals.clone(),
                            scopes: Vec::new(),
                        }));
                    }
                }
                // The claims stand: the sweeper finishes them after the grace,
                // and the gateway's retry answers `Duplicate`.
                Err(e) => {
                    let msg = e.to_string();
                    for (i, ..) in group {
                        out[*i] = Some(Err(Error::Internal(msg.clone())));
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("commit result missing".into()))))
            .collect())
    }

    /// C2 of leased commits: charge the `ALL` row with the group and take
    /// `min(holds, r)` out of the lease's entry while the lease is counted, else
    /// only the charge. Idempotent through `settling`. Returns the row after the
    /// charge; `None` after too many lost races.
    pub(super) async fn charge_leased(
        &self,
        group: &Charge<'_>,
        lease_id: &str,
    ) -> Result<Option<Item>> {
        let table = self.t.budgets.as_str();
        let h = &group.holds[0].hold;
        let attr = entry_attr(lease_id);
        let entry_names = [("#e", attr.as_str()), ("#v", "v"), ("#r", "r")];
        let mut charge: Option<Charge<'_>> = None;
        for _ in 0..MAX_ATTEMPTS {
            let Some(row) = self.get_all_row(&h.tenant_id, &h.period).await? else {
                self.ensure_all_row(&h.tenant_id, &h.period, Decimal::ZERO)
                    .await?;
                continue;
            };
            // What an earlier attempt (or the sweeper) has not charged yet.
            let Some(rest) = charge.as_ref().unwrap_or(group).remaining(&row, table)? else {
                return Ok(Some(row));
            };
            let c = charge.insert(rest);
            let free = c.free();
            let mut values = c.values();
            values.push((":one".into(), nu(1)));
            let entry = Entry::read(&row, table, lease_id)?;
            let (update, cond, next) = match entry {
                // The usual case: the lease holds the whole group. Commits of one
                // lease then commute (a delta, not a versioned rewrite), so
                // batches do not retry against each other; the version still
                // moves, which makes a racing renewal re-read.
                Some(e) if e.reserved >= c.hold && c.hold > Decimal::ZERO => {
                    values.push((":h".into(), n(c.hold)));
                    values.push((":nt".into(), n(-c.hold)));
                    values.push((":delta".into(), n(c.hold - c.cost)));
                    (
                        format!(
                            "SET #e.#r = #e.#r - :h, #e.#v = #e.#v + :one \
                             ADD {COUNTER_ADD}, #reserved :nt, #available :delta"
                        ),
                        format!("#e.#r >= :h AND {free}"),
                        None,
                    )
                }
                Some(e) => {
                    let taken = c.hold.min(e.reserved);
                    let next = Entry {
                        reserved: e.reserved - taken,
                        ver: e.ver + 1,
                        ..e
                    };
                    values.push((":entry".into(), next.value()));
                    values.push((":v".into(), nu(e.ver)));
                    values.push((":nt".into(), n(-taken)));
                    values.push((":delta".into(), n(taken - c.cost)));
                    (
                        format!(
                            "SET #e = :entry ADD {COUNTER_ADD}, #reserved :nt, #available :delta"
                        ),
                        format!("#e.#v = :v AND {free}"),
                        Some(next),
                    )
                }
                None => {
                    values.push((":nc".into(), n(-c.cost)));
                    (
                        format!("ADD {COUNTER_ADD}, #available :nc"),
                        format!(
                            "attribute_exists(tenantId) AND attribute_not_exists(#e) AND {free}"
                        ),
                        None,
                    )
                }
            };
            let key = self.all_key(&h.tenant_id, &h.period);
            if let Some(row) = self
                .charge_row(key, &update, &cond, &entry_names, &values)
                .await?
            {
                let next = match next {
                    Some(next) => Some(next),
                    None => Entry::read(&row, table, lease_id)?,
                };
                if let Some(next) = next {
                    self.mirror_lease(lease_id, &next).await?;
                }
                return Ok(Some(row));
            }
            // A renewal, another batch or a close changed the entry: re-read.
        }
        Ok(None)
    }

    pub(super) async fn expire_leases(&self, now_ms: i64) -> Result<u64> {
        let mut expired = 0;
        for id in self.due(&self.t.leases, "leaseId", now_ms).await? {
            let Some(l) = self.raw_lease(&id).await? else {
                continue;
            };
            if !matches!(l.state, LState::Open | LState::Pending) {
                continue;
            }
            let entry = self
                .get_all_row(l.tenant(), &l.lease.period)
                .await?
                .map(|r| Entry::read(&r, &self.t.budgets, &id))
                .transpose()?
                .flatten();
            let expires_at = entry.map_or(l.lease.expires_at_ms, |e| e.expires_at_ms);
            if expires_at > now_ms {
                // Renewed, but the mirror lags (a crash after the renewal).
                if let Some(e) = entry {
                    self.mirror_lease(&id, &e).await?;
                }
                continue;
            }
            expired += u64::from(self.close_lease(&l, LState::Expired, now_ms).await?);
        }
        Ok(expired)
    }
}

/// Grants have no clock of their own: the lease's creation time stands for now.
fn now_of(lease: &LeaseRecord) -> i64 {
    lease.created_at_ms
}

/// C1 of a leased commit: the hold item written `committing` (the claim), with
/// the cost at the lease's rates. Returns the hold as answered, the item and
/// the cost.
fn leased_claim(l: &DLease, c: &LeasedCommit, now_ms: i64) -> Result<(Hold, Item, Decimal)> {
    let terms = &l.lease.terms;
    let cost = terms.rates.cost(&c.usage).map_err(|_| {
        Error::invalid(format!(
            "usage of request {} overflows the cost arithmetic",
            c.request_id
        ))
    })?;
    let hold = Hold {
        request_id: c.request_id.clone(),
        tenant_id: terms.tenant_id.clone(),
        period: l.lease.period.clone(),
        model_id: terms.model_id.clone(),
        target_model: terms.target_model.clone(),
        attribution: Attribution {
            application_id: terms.application_id.clone(),
            ..c.attribution.clone()
        },
        max_output_tokens: crate::ledger::max_output_tokens(
            None,
            terms.default_max_output_tokens,
            terms.max_tokens_cap,
        ),
        hold_usd: c.hold_usd,
        budget_remaining_usd: Decimal::ZERO,
        rates: terms.rates,
        created_at_ms: now_ms,
        expires_at_ms: l.lease.expires_at_ms,
        state: HoldState::Committed,
        model_budget_usd: None,
        app_budget_usd: None,
        user_budget_usd: None,
        input_tokens_estimate: 0,
    };
    let mut item = hold_item(&hold);
    let u = &c.usage;
    for (k, v) in [
        ("state", s(DState::Committing.as_str())),
        ("priorState", s("leased")),
        ("leaseId", s(&c.lease_id)),
        ("costUsd", n(cost)),
        ("inputTokens", nu(u.input_tokens)),
        ("outputTokens", nu(u.output_tokens)),
        ("cacheReadInputTokens", nu(u.cache_read_input_tokens)),
        ("cacheWriteInputTokens", nu(u.cache_write_input_tokens)),
        ("estimated", AttributeValue::Bool(c.estimated)),
        ("capped", AttributeValue::Bool(c.capped)),
        ("settledAt", ni(now_ms)),
        ("sweepAt", ni(now_ms.saturating_add(RECOVERY_GRACE_MS))),
    ] {
        item.insert(k.to_string(), v);
    }
    Ok((hold, item, cost))
}
