//! What the filter tells Envoy about each request, for access logs, later
//! filters and tracing: tenant, application, request id, model, tokens and cost,
//! as Envoy filter state `wasm.tollgate.<name>` (read with
//! `%FILTER_STATE(wasm.tollgate.tenant_id:PLAIN)%`, or `filter_state` in CEL).
//! A Wasm filter cannot write Envoy's dynamic metadata (proxy-wasm's
//! `set_property` writes filter state under `wasm.`; envoyproxy/envoy#15148),
//! so this is the Envoy-native place for it. Plain Rust: the glue sets them.

use crate::settle::Settlement;
use tollgate_wire::api::Reservation;
use tollgate_wire::rates::cap_usage;

/// Property names (Envoy prefixes them with `wasm.`).
pub const TENANT_ID: &str = "tollgate.tenant_id";
pub const APPLICATION_ID: &str = "tollgate.application_id";
pub const REQUEST_ID: &str = "tollgate.request_id";
pub const MODEL: &str = "tollgate.model";
pub const INPUT_TOKENS: &str = "tollgate.input_tokens";
pub const OUTPUT_TOKENS: &str = "tollgate.output_tokens";
pub const COST_USD: &str = "tollgate.cost_usd";
/// `true` when the tokens were estimated (the stream was cut or unreadable).
pub const ESTIMATED: &str = "tollgate.estimated";

/// Known from the start: the request id (also on refusals, which echo it in
/// `x-tollgate-request-id`), so every log line can be matched to a ledger entry.
pub fn received(request_id: &str) -> Vec<(&'static str, String)> {
    vec![(REQUEST_ID, request_id.to_owned())]
}

/// Known once the request is admitted.
pub fn admitted(r: &Reservation) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (TENANT_ID, r.tenant_id.clone()),
        (MODEL, r.model_id.clone()),
    ];
    if let Some(app) = &r.application_id {
        out.push((APPLICATION_ID, app.clone()));
    }
    out
}

/// Known once the response is metered: what the ledger will charge. The usage
/// is capped as the sidecar caps it (`cap_usage`), and the cost is computed at
/// the reservation's rates, so the access log and the ledger agree. A request
/// Bedrock did not charge (an upstream error) costs 0. No cost when the
/// reservation came without rates (an older sidecar).
pub fn settled(
    s: &Settlement,
    r: &Reservation,
    input_tokens_estimate: u64,
) -> Vec<(&'static str, String)> {
    let c = match s {
        Settlement::Commit(c) => c,
        Settlement::Release { .. } => {
            return vec![
                (INPUT_TOKENS, "0".into()),
                (OUTPUT_TOKENS, "0".into()),
                (COST_USD, "0".into()),
            ]
        }
    };
    let (usage, _) = cap_usage(
        &c.usage,
        c.estimated,
        r.max_output_tokens,
        input_tokens_estimate,
    );
    let mut out = vec![
        (INPUT_TOKENS, usage.input_tokens.to_string()),
        (OUTPUT_TOKENS, usage.output_tokens.to_string()),
        (ESTIMATED, c.estimated.to_string()),
    ];
    if let Some(cost) = r.rates.as_ref().and_then(|rates| rates.cost(&usage).ok()) {
        out.push((COST_USD, cost.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use tollgate_wire::api::{Commit, Usage};
    use tollgate_wire::rates::Rates;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn reservation() -> Reservation {
        Reservation {
            request_id: "tg-1".into(),
            tenant_id: "acme".into(),
            application_id: Some("chat".into()),
            model_id: "anthropic.claude-3-haiku-20240307-v1:0".into(),
            target_model: "arn:aws:bedrock:us-east-1:1:application-inference-profile/p".into(),
            max_output_tokens: 100,
            hold_usd: d("0.001"),
            budget_remaining_usd: d("5"),
            rates: Some(Rates {
                input: d("0.25"),
                output: d("1.25"),
                cache_read: d("0.03"),
                cache_write: d("0.3"),
            }),
            rate_limits: Vec::new(),
        }
    }

    fn commit(usage: Usage, estimated: bool) -> Settlement {
        Settlement::Commit(Commit {
            request_id: "tg-1".into(),
            usage,
            estimated,
            unreserved: None,
            lease: None,
        })
    }

    fn get<'a>(v: &'a [(&str, String)], k: &str) -> Option<&'a str> {
        v.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn admission_names_tenant_application_and_model() {
        assert_eq!(get(&received("tg-1"), REQUEST_ID), Some("tg-1"));
        let mut r = reservation();
        let a = admitted(&r);
        assert_eq!(get(&a, TENANT_ID), Some("acme"));
        assert_eq!(get(&a, APPLICATION_ID), Some("chat"));
        assert_eq!(
            get(&a, MODEL),
            Some("anthropic.claude-3-haiku-20240307-v1:0")
        );
        r.application_id = None;
        assert_eq!(get(&admitted(&r), APPLICATION_ID), None);
    }

    #[test]
    fn cost_is_what_the_ledger_charges() {
        let u = Usage {
            input_tokens: 1000,
            output_tokens: 200,
            cache_read_input_tokens: 10,
            cache_write_input_tokens: 0,
        };
        let a = settled(&commit(u, false), &reservation(), 50);
        assert_eq!(get(&a, INPUT_TOKENS), Some("1000"));
        // Output is charged up to the limit the gateway set (100), like the sidecar.
        assert_eq!(get(&a, OUTPUT_TOKENS), Some("100"));
        // 1000 × 0.25 + 100 × 1.25 + 10 × 0.03, per 1M.
        assert_eq!(get(&a, COST_USD), Some("0.0003753"));
        assert_eq!(get(&a, ESTIMATED), Some("false"));
        // An estimate never charges more input than the hold was priced with.
        let e = settled(&commit(u, true), &reservation(), 50);
        assert_eq!(get(&e, INPUT_TOKENS), Some("50"));
        assert_eq!(get(&e, ESTIMATED), Some("true"));
    }

    #[test]
    fn an_uncharged_request_costs_nothing_and_unknown_rates_give_no_cost() {
        let rel = Settlement::Release {
            request_id: "tg-1".into(),
            reason: "upstream status 500".into(),
        };
        assert_eq!(get(&settled(&rel, &reservation(), 0), COST_USD), Some("0"));
        let mut r = reservation();
        r.rates = None;
        let a = settled(&commit(Usage::default(), false), &r, 0);
        assert_eq!(get(&a, COST_USD), None);
        assert_eq!(get(&a, OUTPUT_TOKENS), Some("0"));
    }
}
