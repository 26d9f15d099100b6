//! A reference proxy-wasm filter for `cargo xtask bench`: what any Wasm filter
//! that reads Bedrock bodies costs in Envoy, without Tollgate's logic.
//!
//! Per request it does the host calls a body-metering filter cannot avoid:
//! reads two request headers, holds the headers until the body is complete,
//! copies the request body into the VM, and copies every response body chunk
//! into the VM. With `{"shared_lease": true}` it also admits each request
//! against one lease record in proxy-wasm shared data, as a lease shared by all
//! of an Envoy's workers would: read the record, parse the headroom, take the
//! hold and write it back with compare-and-swap, retrying on a conflict.
//!
//! The bench runs it as gateways C and D beside A (Tollgate) and B (no Wasm):
//! C − B is the price of a body-reading Wasm filter at all, A − C what
//! Tollgate's own work adds, D − C what a shared-data lease would add.
//!
//! Built for wasm32-wasip1 by the bench; natively it only has to compile.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use rust_decimal::Decimal;
use std::str::FromStr;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { shared_lease: false }) });
}}

const LEASE: &str = "wasm_baseline.lease";
/// The hold of one bench request (300 input × $0.25 + 128 output × $1.25 per 1M).
const HOLD: &str = "0.000235";

struct Root {
    shared_lease: bool,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        self.shared_lease = String::from_utf8_lossy(&config).contains("\"shared_lease\": true");
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            shared_lease: self.shared_lease,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    shared_lease: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let _path = self.get_http_request_header(":path");
        let _auth = self.get_http_request_header("authorization");
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        std::hint::black_box(body);
        if self.shared_lease {
            take_hold();
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _: bool) -> Action {
        let chunk = self.get_http_response_body(0, size).unwrap_or_default();
        std::hint::black_box(chunk);
        Action::Continue
    }
}

/// One admission against the shared lease record `"<lease id> <headroom>"`:
/// refilled when it runs dry, so the bench never refuses.
fn take_hold() {
    let hold = Decimal::from_str(HOLD).unwrap_or_default();
    loop {
        let (value, cas) = hostcalls::get_shared_data(LEASE).unwrap_or((None, None));
        let text = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("");
        let (id, headroom) = text.split_once(' ').unwrap_or(("lease-0", "0"));
        let mut headroom = Decimal::from_str(headroom).unwrap_or_default();
        if headroom < hold {
            headroom += Decimal::from(1000);
        }
        let record = format!("{id} {}", headroom - hold);
        match hostcalls::set_shared_data(LEASE, Some(record.as_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
}
