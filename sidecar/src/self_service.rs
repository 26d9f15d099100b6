//! `POST /v1/self`: a tenant's own balance and limits, asked through the
//! gateway (`GET /tollgate/v1/self`) with the tenant's usual credential. The
//! credential is authenticated exactly as for a reserve, and the answer is
//! about its tenant only: there is no parameter naming another.

use crate::api::BalanceView;
use crate::error::{Error, Result};
use crate::ledger::{self, ResetCycle};
use crate::service::{Admission, Caller, Service};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_wire::api::{SelfRequest, SelfResponse};
use tollgate_wire::openapi::Money;

/// What a tenant sees of itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SelfView {
    pub tenant_id: String,
    /// The application the credential is bound to, if any.
    pub application_id: Option<String>,
    pub reset_cycle: ResetCycle,
    /// The current period's balance, with its per-model breakdown and the
    /// tenant's application and user budgets.
    pub balance: BalanceView,
    pub limits: SelfLimits,
    /// When the credential stops working (bearer keys with an expiry).
    #[schema(format = DateTime)]
    pub credential_expires_at: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SelfLimits {
    pub rate_limit_rpm: Option<u32>,
    pub rate_limit_tpm: Option<u64>,
    pub model_rate_limit_tpm: BTreeMap<String, u64>,
    pub max_tokens_cap: Option<u64>,
    pub allowed_models: Vec<String>,
    #[schema(value_type = BTreeMap<String, Money>)]
    pub model_budgets: BTreeMap<String, Decimal>,
}

impl Service {
    /// The caller's own view, or the denial its credential earns.
    pub async fn self_view(&self, req: SelfRequest) -> Result<SelfResponse> {
        if req.request_id.is_empty() || req.request_id.len() > 256 {
            return Err(Error::invalid("request_id must be 1 to 256 characters"));
        }
        let now = self.clock.now();
        let caller = match self
            .authenticate(&req.credential, now, Admission::Checked)
            .await?
        {
            Ok(c) => c,
            Err((tenant, d)) => {
                self.metrics
                    .request(&tenant, crate::metrics::Outcome::DeniedAuth);
                return Ok(SelfResponse::Deny(d));
            }
        };
        let Caller {
            tenant,
            key_application,
            credential_expires_ms,
            ..
        } = caller;
        let period = ledger::period_key(tenant.reset_cycle, now);
        let mut balance = self
            .store
            .balance(&tenant.tenant_id, &period, tenant.budget_usd)
            .await?;
        balance.apply_config(&tenant);
        // A credential bound to an application sees that application's budget,
        // not its sibling applications' (the tenant's totals bind it too).
        if let Some(app) = &key_application {
            balance.by_application.retain(|a, _| a == app);
        }
        let remaining = balance.totals.available();
        let view = SelfView {
            tenant_id: tenant.tenant_id.clone(),
            application_id: key_application,
            reset_cycle: tenant.reset_cycle,
            balance: BalanceView::from(balance),
            limits: SelfLimits {
                rate_limit_rpm: tenant.rate_limit_rpm,
                rate_limit_tpm: tenant.rate_limit_tpm,
                model_rate_limit_tpm: tenant.model_rate_limit_tpm,
                max_tokens_cap: tenant.max_tokens_cap,
                allowed_models: tenant.allowed_models,
                model_budgets: tenant.model_budgets,
            },
            credential_expires_at: credential_expires_ms.map(crate::clock::rfc3339),
        };
        tracing::debug!(tenant = %tenant.tenant_id, "self view");
        Ok(SelfResponse::Allow {
            view: serde_json::to_value(&view)?,
            budget_remaining_usd: remaining,
        })
    }
}
