//! Commit steps C2–C6 (see the module docs), for one hold or for a batch.
//!
//! A *settlement group* is a set of `committing` holds of one tenant, period
//! and model that are charged together: the commits of one lease that arrived
//! in one batch from the gateway, or a single hold. Each budget row then takes
//! one `UpdateItem` for the whole group — the sums of its costs and tokens, all
//! its ids added to `settling` — guarded by `NOT contains(settling, :idN)` for
//! every id. So a group is charged on a row all or nothing, and a retry (or the
//! sweeper finishing one of its holds alone) finds the ids already there and
//! charges only the ones that are not. Usage records go in `BatchWriteItem`s.

use super::*;
use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};

/// Ids per conditional update: each adds a `NOT contains` clause, and
/// DynamoDB caps an expression at 4 KB.
pub(super) const MAX_GROUP: usize = 64;
/// Items per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;

/// The counters a charge adds to a budget row (names in [`COUNTER_NAMES`]).
pub(super) const COUNTER_ADD: &str =
    "#cost :c, #it :it, #ot :ot, #cr :cr, #cw :cw, #req :n, #settling :idset";

pub(super) const COUNTER_NAMES: [(&str, &str); 10] = [
    ("#cost", "totalCost"),
    ("#it", "inputTokens"),
    ("#ot", "outputTokens"),
    ("#cr", "cacheReadInputTokens"),
    ("#cw", "cacheWriteInputTokens"),
    ("#req", "requests"),
    ("#settling", "settling"),
    ("#openHolds", "openHolds"),
    ("#available", "available"),
    ("#reserved", "reserved"),
];

/// What a settlement group (or the part of it not yet charged on a row) adds.
pub(super) struct Charge<'a> {
    pub(super) holds: Vec<&'a DHold>,
    /// Sum of the costs.
    pub(super) cost: Decimal,
    /// Sum of the holds (what the requests were admitted with).
    pub(super) hold: Decimal,
    usage: Usage,
}

impl<'a> Charge<'a> {
    pub(super) fn of(holds: Vec<&'a DHold>, table: &str) -> Result<Self> {
        let mut cost = Decimal::ZERO;
        let mut hold = Decimal::ZERO;
        let mut usage = Usage::default();
        for d in &holds {
            cost += d
                .cost
                .ok_or_else(|| corrupt(table, "costUsd", "missing on a committing hold"))?;
            hold += d.hold.hold_usd.max(Decimal::ZERO);
            let u = &d.usage;
            usage.input_tokens = usage.input_tokens.saturating_add(u.input_tokens);
            usage.output_tokens = usage.output_tokens.saturating_add(u.output_tokens);
            usage.cache_read_input_tokens = usage
                .cache_read_input_tokens
                .saturating_add(u.cache_read_input_tokens);
            usage.cache_write_input_tokens = usage
                .cache_write_input_tokens
                .saturating_add(u.cache_write_input_tokens);
        }
        Ok(Self {
            holds,
            cost,
            hold,
            usage,
        })
    }

    /// The part of the group not yet charged on `row` (ids not in its
    /// `settling`); `None` when every id is already there.
    pub(super) fn remaining(&self, row: &Item, table: &str) -> Result<Option<Self>> {
        let g = Get::new(row, table);
        let rest: Vec<&DHold> = self
            .holds
            .iter()
            .copied()
            .filter(|d| !g.set_contains("settling", &d.hold.request_id))
            .collect();
        if rest.is_empty() {
            return Ok(None);
        }
        Self::of(rest, table).map(Some)
    }

    /// The values [`COUNTER_ADD`] and [`Self::free`] use (`:id0`, `:id1`, …).
    pub(super) fn values(&self) -> Vec<(String, AttributeValue)> {
        let u = &self.usage;
        let ids: Vec<String> = self
            .holds
            .iter()
            .map(|d| d.hold.request_id.clone())
            .collect();
        let mut v = vec![
            (":c".to_string(), n(self.cost)),
            (":it".to_string(), nu(u.input_tokens)),
            (":ot".to_string(), nu(u.output_tokens)),
            (":cr".to_string(), nu(u.cache_read_input_tokens)),
            (":cw".to_string(), nu(u.cache_write_input_tokens)),
            (":n".to_string(), nu(self.holds.len() as u64)),
            (":idset".to_string(), AttributeValue::Ss(ids.clone())),
        ];
        for (i, id) in ids.into_iter().enumerate() {
            v.push((format!(":id{i}"), s(id)));
        }
        v
    }

    /// `attr` holds none of the group's ids (`#settling` or `#openHolds`).
    pub(super) fn none_in(&self, attr: &str) -> String {
        (0..self.holds.len())
            .map(|i| format!("NOT contains({attr}, :id{i})"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The guard of every charge: not charged on this row yet.
    pub(super) fn free(&self) -> String {
        self.none_in("#settling")
    }
}

/// Borrowed view of owned placeholder pairs, for [`DynamoStore::update`].
pub(super) fn borrowed(v: &[(String, AttributeValue)]) -> Vec<(&str, AttributeValue)> {
    v.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()
}

impl DynamoStore {
    /// One conditional update of a budget row with the names and values the
    /// expressions use; `Some(row)` when it applied.
    pub(super) async fn charge_row(
        &self,
        key: Vec<(&'static str, AttributeValue)>,
        update: &str,
        cond: &str,
        extra_names: &[(&str, &str)],
        values: &[(String, AttributeValue)],
    ) -> Result<Option<Item>> {
        let mut nm = COUNTER_NAMES.to_vec();
        nm.extend_from_slice(extra_names);
        let exprs = [update, cond];
        let values = borrowed(values);
        applied(
            self.update(
                &self.t.budgets,
                key,
                update,
                Some(cond),
                &used(&exprs, &nm),
                used(&exprs, &values),
            )
            .await,
        )
    }

    /// C2 of a held (not leased) commit: charge the `ALL` row, open-style while
    /// the hold is counted there, else late-style. Idempotent through
    /// `settling`. Returns the row after the charge; `None` after too many lost
    /// races.
    async fn charge_hold(&self, charge: &Charge<'_>) -> Result<Option<Item>> {
        let h = &charge.holds[0].hold;
        let table = self.t.budgets.as_str();
        let free = charge.free();
        let mut values = charge.values();
        values.push((":nh".into(), n(-h.hold_usd)));
        values.push((":delta".into(), n(h.hold_usd - charge.cost)));
        values.push((":nc".into(), n(-charge.cost)));
        for _ in 0..MAX_ATTEMPTS {
            // Open-style: the hold is still counted in `reserved`.
            let open = format!("contains(#openHolds, :id0) AND {free}");
            let update = format!(
                "ADD {COUNTER_ADD}, #reserved :nh, #available :delta DELETE #openHolds :idset"
            );
            let key = self.all_key(&h.tenant_id, &h.period);
            if let Some(row) = self.charge_row(key, &update, &open, &[], &values).await? {
                return Ok(Some(row));
            }
            // Late-style: the hold was given back (expired/released) or never counted.
            let late =
                format!("attribute_exists(tenantId) AND NOT contains(#openHolds, :id0) AND {free}");
            let update = format!("ADD {COUNTER_ADD}, #available :nc");
            let key = self.all_key(&h.tenant_id, &h.period);
            if let Some(row) = self.charge_row(key, &update, &late, &[], &values).await? {
                return Ok(Some(row));
            }
            match self.get_all_row(&h.tenant_id, &h.period).await? {
                // The row never existed (reserve crashed before R2): like SQLite,
                // start it with a zero budget rather than lose the charge.
                None => {
                    self.ensure_all_row(&h.tenant_id, &h.period, Decimal::ZERO)
                        .await?
                }
                Some(row) => {
                    if charge.remaining(&row, table)?.is_none() {
                        return Ok(Some(row)); // already charged by an earlier attempt
                    }
                    // A give-back or a late R2 moved the id between our two tries.
                }
            }
        }
        Ok(None)
    }

    /// C2–C6 for a `committing` hold; idempotent. Returns the period totals
    /// and the hold's scoped budgets after the charge.
    pub(super) async fn finish_commit(
        &self,
        d: &DHold,
        now_ms: i64,
    ) -> Result<(Totals, Vec<ScopeTotals>)> {
        self.finish_commits(&[d], now_ms).await
    }

    /// C2–C6 for a settlement group (see the module docs): `committing` holds of
    /// one tenant, period, model and lease, or a single held commit. Idempotent
    /// per hold. Returns the period totals after the charge, and (for a held
    /// commit) the rows of the scoped budgets it was admitted under.
    pub(super) async fn finish_commits(
        &self,
        ds: &[&DHold],
        now_ms: i64,
    ) -> Result<(Totals, Vec<ScopeTotals>)> {
        let Some(first) = ds.first() else {
            return Err(Error::Internal("an empty settlement group".into()));
        };
        let h = &first.hold;
        if ds.iter().any(|d| {
            d.hold.tenant_id != h.tenant_id
                || d.hold.period != h.period
                || d.hold.model_id != h.model_id
                || d.lease_id != first.lease_id
        }) || (first.lease_id.is_none() && ds.len() > 1)
            || ds.len() > MAX_GROUP
        {
            return Err(Error::Internal(
                "a settlement group mixes tenants, periods, models or leases".into(),
            ));
        }

        let charge = Charge::of(ds.to_vec(), &self.t.holds)?;
        // C2: the period's ALL row.
        let row = match &first.lease_id {
            Some(lease_id) => self.charge_leased(&charge, lease_id).await?,
            None => self.charge_hold(&charge).await?,
        };
        let totals = row
            .map(|r| totals_from_item(&r, &self.t.budgets, &h.period))
            .transpose()?
            .ok_or_else(|| {
                Error::Internal(format!(
                    "commit {}: too much contention on the budget row (transient; retry)",
                    h.request_id
                ))
            })?;

        // C3: the per-model row, always; the application and user rows of a
        // hold admitted under their budgets (held commits only: such requests
        // are never leased).
        let single = ds.len() == 1;
        let model_row = self
            .charge_scope_row(&charge, &h.model_id, single && h.model_budget_usd.is_some())
            .await?;
        let mut scopes = Vec::new();
        let mut rows = vec![self.all_key(&h.tenant_id, &h.period), self.model_key(h)];
        for scope in h.scoped_budgets() {
            let row = match scope.level {
                Level::Model => model_row.clone(),
                _ if single => {
                    rows.push(self.row_key(h, &scope.row()));
                    self.charge_scope_row(&charge, &scope.row(), true).await?
                }
                _ => continue,
            };
            let g = Get::new(&row, &self.t.budgets);
            scopes.push(ScopeTotals {
                scope: ScopedBudget {
                    budget_usd: g.opt_dec("totalBudget")?.unwrap_or(scope.budget_usd),
                    ..scope
                },
                spent_usd: g.dec("totalCost")?,
                reserved_usd: g.dec("reserved")?,
            });
        }

        // C4: the usage records, written whole (the same content on a retry).
        self.put_usage_records(ds).await?;

        // C5: committing → committed (leaves the sweep index). One item each,
        // conditional, off the tenant's rows.
        let done = futures_util::future::join_all(ds.iter().map(|d| {
            self.transition(
                &d.hold.request_id,
                &[DState::Committing],
                "SET #state = :committed, finishedAt = :now REMOVE #sweepShard, #sweepAt",
                vec![
                    (":committed", s(DState::Committed.as_str())),
                    (":now", ni(now_ms)),
                ],
            )
        }))
        .await;
        for r in done {
            r?;
        }

        // C6: the hold states guard from now on; drop the markers.
        let ids = AttributeValue::Ss(ds.iter().map(|d| d.hold.request_id.clone()).collect());
        for key in rows {
            applied(
                self.update(
                    &self.t.budgets,
                    key,
                    "DELETE #settling :idset",
                    Some("attribute_exists(tenantId)"),
                    &[("#settling", "settling")],
                    vec![(":idset", ids.clone())],
                )
                .await,
            )?;
        }
        Ok((totals, scopes))
    }

    /// C3: a per-model, application or user row (created by the update if
    /// missing), as it stands after the charge. A row with a budget keeps
    /// `reserved`/`available` like the ALL row: open-style when the hold is
    /// still counted there (`counted_there`: a held commit admitted under that
    /// budget), else late-style. A row without one takes the plain counters
    /// (one update, as before model budgets).
    async fn charge_scope_row(
        &self,
        group: &Charge<'_>,
        row_id: &str,
        counted_there: bool,
    ) -> Result<Item> {
        let table = self.t.budgets.as_str();
        let h = &group.holds[0].hold;
        let key = self.row_key(h, row_id);
        // What an earlier attempt (or the sweeper) has not charged yet.
        let mut rest: Option<Charge<'_>> = None;
        let extra = [
            ("#period", "period"),
            ("#scope", "scope"),
            ("#budget", "totalBudget"),
        ];
        let set_scope = "SET #period = :p, #scope = :m";
        for _ in 0..MAX_ATTEMPTS {
            let charge = rest.as_ref().unwrap_or(group);
            let free = charge.free();
            let mut values = charge.values();
            values.push((":p".into(), s(&h.period)));
            values.push((":m".into(), s(row_id)));
            values.push((":nh".into(), n(-charge.hold)));
            values.push((":delta".into(), n(charge.hold - charge.cost)));
            values.push((":nc".into(), n(-charge.cost)));
            let mut styles = Vec::with_capacity(3);
            if counted_there {
                styles.push((
                    format!(
                        "{set_scope} ADD {COUNTER_ADD}, #reserved :nh, #available :delta DELETE #openHolds :idset"
                    ),
                    format!("contains(#openHolds, :id0) AND {free}"),
                ));
            }
            styles.push((
                format!("{set_scope} ADD {COUNTER_ADD}"),
                format!("attribute_not_exists(#budget) AND {free}"),
            ));
            styles.push((
                format!("{set_scope} ADD {COUNTER_ADD}, #available :nc"),
                format!(
                    "attribute_exists(#budget) AND {} AND {free}",
                    charge.none_in("#openHolds")
                ),
            ));
            for (update, cond) in &styles {
                if let Some(row) = self
                    .charge_row(key.clone(), update, cond, &extra, &values)
                    .await?
                {
                    return Ok(row);
                }
            }
            // A give-back or a budget being set moved the row between our tries,
            // or an earlier attempt charged some of the group already.
            if let Some(row) = self.get(table, key.clone()).await? {
                match charge.remaining(&row, table)? {
                    None => return Ok(row),
                    Some(r) => rest = Some(r),
                }
            }
        }
        Err(Error::Internal(format!(
            "commit {}: too much contention on the budget row {row_id} (transient; retry)",
            h.request_id
        )))
    }

    /// C4: one usage record per hold, in `BatchWriteItem`s. A record is written
    /// whole from the claimed hold, so a repeat writes the same content.
    async fn put_usage_records(&self, ds: &[&DHold]) -> Result<()> {
        let mut requests = Vec::with_capacity(ds.len());
        for d in ds {
            let h = &d.hold;
            let cost = d
                .cost
                .ok_or_else(|| corrupt(&self.t.holds, "costUsd", "missing on a committing hold"))?;
            let mut item = Item::new();
            item.insert("requestId".into(), s(&h.request_id));
            item.insert("tenantId".into(), s(&h.tenant_id));
            item.insert("modelId".into(), s(&h.model_id));
            put_attribution(&mut item, &h.attribution);
            put_usage(&mut item, &d.usage);
            item.insert("costUsd".into(), n(cost));
            item.insert("estimated".into(), AttributeValue::Bool(d.estimated));
            item.insert("capped".into(), AttributeValue::Bool(d.capped));
            item.insert("at".into(), ni(d.settled_at_ms));
            item.insert("period".into(), s(&h.period));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| Error::Internal(format!("usage record: {e}")))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        for chunk in requests.chunks(BATCH_WRITE_ITEMS) {
            self.batch_write(&self.t.usage, chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// `BatchWriteItem` of up to 25 requests on one table, retrying what
    /// DynamoDB leaves unprocessed (throttling) with a bounded backoff.
    async fn batch_write(&self, table: &str, mut requests: Vec<WriteRequest>) -> Result<()> {
        for attempt in 0..MAX_ATTEMPTS {
            let out = self
                .client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .map_err(|e| hard(ddb_error("BatchWriteItem", table, e), "BatchWriteItem"))?;
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            let backoff = 10u64 << attempt.min(6);
            tokio::time::sleep(Duration::from_millis(backoff)).await;
        }
        Err(Error::Internal(format!(
            "DynamoDB BatchWriteItem on {table}: {} items still unprocessed after {MAX_ATTEMPTS} \
             attempts (throttled; transient — retry later)",
            requests.len()
        )))
    }
}
