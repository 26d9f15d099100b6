//! # bedrock-emulator
//!
//! A deterministic Amazon Bedrock Runtime emulator for Tollgate's tests, demo and
//! benchmarks. It serves `POST /model/{modelId}/converse`, `/converse-stream`,
//! `/invoke` and `/invoke-with-response-stream`, routing on the *raw* request
//! path (the model segment is percent-decoded by the emulator, so both
//! `arn%3Aaws%3A…%2Fid` and `arn:aws:…%2Fid` work), verifies AWS SigV4 on every
//! request (service `bedrock`), and answers with Bedrock's exact wire shapes.
//!
//! ## Token formula (deterministic)
//!
//! * **Input text** = every text the model would read, concatenated without
//!   separators:
//!   - Converse/ConverseStream: `system[].text` + `messages[].content[].text`;
//!   - InvokeModel, Anthropic Messages (`anthropic_version` or `messages` with
//!     typed blocks): `system` (string or `[{type:text,text}]`) +
//!     `messages[].content` (string or `[{type:text,text}]`);
//!   - Amazon Nova (`messages` with untyped blocks and `inferenceConfig` /
//!     `schemaVersion`, or a model id containing `nova`): `system[].text` +
//!     `messages[].content[].text`;
//!   - Titan: `inputText`; Llama / Mistral: `prompt`.
//! * `input_tokens = max(1, ceil(utf8_bytes(input text) / 4))`.
//! * `output_tokens = min(max_tokens, 20 + input_tokens / 2)` (integer division),
//!   `max_tokens` being Converse `inferenceConfig.maxTokens`, Anthropic
//!   `max_tokens`, Titan `textGenerationConfig.maxTokenCount`, Llama
//!   `max_gen_len`, Mistral `max_tokens`, Nova `inferenceConfig.max_new_tokens`;
//!   512 when absent. The stop reason is `max_tokens` when the cap applied.
//! * The output text is `output_tokens` words `tok0 tok1 tok2 …` joined by single
//!   spaces; streams send it in deltas of 8 words.
//! * `[[cache:read=N,write=M]]` anywhere in the input text reports N cache-read
//!   and M cache-write input tokens (summed over markers; the marker text itself
//!   still counts as input text). `inputTokens` excludes them, `totalTokens`
//!   includes them, as on Bedrock.
//! * `[[fault:NAME]]` in the text, or the header `x-emulator-fault: NAME`
//!   (header wins), injects a fault: `throttle` (429 ThrottlingException),
//!   `validation` (400 ValidationException), `internal` (500
//!   InternalServerException), `unavailable` (503 ServiceUnavailableException),
//!   and for streaming operations `stream-exception` (a
//!   `modelStreamErrorException` frame after two deltas), `stream-cut` (the
//!   connection is aborted after two deltas) and `corrupt-frame` (one payload
//!   byte of the middle frame flipped; the rest of the stream follows).
//!   Stream faults on non-streaming operations are ignored.
//! * Reported latencies are deterministic too: `100 + 5 * output_tokens` ms.
//!
//! ## Inspection API (unsigned)
//!
//! `GET /_emulator/health`, `GET /_emulator/requests` (recorded requests, oldest
//! first, at most 10,000), `DELETE /_emulator/requests`, and `GET` / `DELETE
//! /_emulator/sns` (messages published with SNS `Publish`, see `sns.rs`). See
//! `README.md`.

mod aws;
mod control;
mod costexplorer;
mod error;
mod pricelist;
mod query;
mod respond;
mod server;
mod sns;
mod sts;
mod tokens;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tollgate_wire::sigv4;

/// Deterministic Amazon Bedrock Runtime emulator (SigV4-verifying).
#[derive(Debug, Parser)]
#[command(name = "bedrock-emulator", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(
        long,
        env = "BEDROCK_EMULATOR_LISTEN",
        default_value = "127.0.0.1:9180"
    )]
    listen: SocketAddr,
    /// Region the SigV4 credential scope must name.
    #[arg(long, env = "BEDROCK_EMULATOR_REGION", default_value = "us-east-1")]
    region: String,
    /// The only access key id accepted.
    #[arg(
        long,
        env = "BEDROCK_EMULATOR_ACCESS_KEY_ID",
        default_value = "AKIATOLLGATEEMULATOR"
    )]
    access_key_id: String,
    /// Its secret access key.
    #[arg(
        long,
        env = "BEDROCK_EMULATOR_SECRET_ACCESS_KEY",
        default_value = "tollgate-emulator-secret"
    )]
    secret_access_key: String,
    /// Also accept `Authorization: Bearer <this token>` (off by default).
    #[arg(long, env = "BEDROCK_EMULATOR_BEARER_TOKEN")]
    bearer_token: Option<String>,
    /// Delay between event-stream frames, in milliseconds.
    #[arg(long, env = "BEDROCK_EMULATOR_STREAM_DELAY_MS", default_value_t = 0)]
    stream_delay_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let config = server::Config {
        credentials: sigv4::Credentials {
            access_key_id: args.access_key_id,
            secret_access_key: args.secret_access_key,
            region: args.region,
            service: "bedrock".to_owned(),
        },
        bearer_token: args.bearer_token.filter(|t| !t.is_empty()),
        stream_delay: Duration::from_millis(args.stream_delay_ms),
    };
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bedrock-emulator: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!(
        "bedrock-emulator listening on http://{addr} (region {}, access key {})",
        config.credentials.region, config.credentials.access_key_id
    );
    let app = server::router(server::AppState::new(config));
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("bedrock-emulator: server error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
