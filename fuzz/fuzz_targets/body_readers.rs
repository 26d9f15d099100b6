//! Request body readers, the rewrite and response usage parsers never panic on
//! any input, and a rewrite never raises the output limit above the cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_filter::request::{rewrite, RequestFacts};
use tollgate_filter::route::BedrockRoute;
use tollgate_filter::usage::body_usage;
use tollgate_wire::api::Operation;

fuzz_target!(|data: &[u8]| {
    for op in [
        Operation::Converse,
        Operation::ConverseStream,
        Operation::Invoke,
        Operation::InvokeWithResponseStream,
    ] {
        if let Ok(facts) = RequestFacts::read(op, data) {
            let cap = 256;
            if let Ok(out) = rewrite(op, data, cap, Some(&facts.metadata)) {
                let again = RequestFacts::read(op, &out).expect("a rewritten body parses");
                if let Some(max) = again.max_output_tokens {
                    assert!(max <= cap.max(facts.max_output_tokens.unwrap_or(0)));
                }
            }
        }
        let _ = body_usage(op, data);
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = BedrockRoute::parse("POST", path);
    }
});
