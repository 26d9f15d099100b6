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
        // One model per family the readers distinguish, and one they do not know.
        for model in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.nova-lite-v1:0",
            "meta.llama3-8b-instruct-v1:0",
            "claude-3-haiku",
        ] {
            if let Ok(facts) = RequestFacts::read(op, model, data) {
                let cap = 256;
                if let Ok(out) = rewrite(op, model, data, cap, Some(&facts.metadata)) {
                    let again =
                        RequestFacts::read(op, model, &out).expect("a rewritten body parses");
                    if let Some(max) = again.max_output_tokens {
                        assert!(max <= cap);
                    }
                }
            }
        }
        let _ = body_usage(op, data);
        let _ = tollgate_filter::usage::estimate_json_output_tokens(data);
    }
    if let Ok(path) = std::str::from_utf8(data) {
        let _ = BedrockRoute::parse("POST", path);
    }
});
