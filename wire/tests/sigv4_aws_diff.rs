//! Differential test: requests signed by AWS's own signer (`aws-sigv4`, the crate
//! inside aws-sdk-rust) must pass `tollgate_wire::sigv4::verify`, and a changed
//! body hash or signature must not. Native only (the dev-dependencies are).
#![cfg(not(target_arch = "wasm32"))]

use std::time::{Duration, UNIX_EPOCH};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SessionTokenMode, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use proptest::prelude::*;
use tollgate_wire::sigv4::{self, Credentials, SigV4Error, SignedRequest};

/// One random Bedrock Runtime call, as a client would sign it.
#[derive(Debug, Clone)]
struct Case {
    region: String,
    model_id: String,
    action: &'static str,
    body: Vec<u8>,
    /// Extra request headers (name, value), in request order; names may repeat.
    extra: Vec<(String, String)>,
    access_key_id: String,
    secret: String,
    session_token: Option<String>,
    /// Sign with `x-amz-content-sha256` (S3-style) as well.
    content_sha_header: bool,
    /// Seconds since the epoch of the signature.
    signed_at: u64,
    /// The verifier's clock, within AWS's 15 minutes of `signed_at`.
    skew: i64,
}

fn region() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("us-east-1".to_owned()),
        Just("eu-west-3".to_owned()),
        Just("ap-northeast-1".to_owned()),
        "[a-z]{2}-[a-z]{4,9}-[1-9]",
    ]
}

/// Foundation model ids (`anthropic.claude-3-haiku-20240307-v1:0`), inference
/// profile ids (`us.` prefix) and ARNs (with `:` and `/`).
fn model_id() -> impl Strategy<Value = String> {
    let base = "[a-z]{2,9}\\.[a-z0-9-]{1,24}(-v[0-9]:[0-9]{1,3})?(:[0-9]{1,3}k)?";
    prop_oneof![
        base.prop_map(|s| s.to_owned()),
        ("(us|eu|apac|global)", base).prop_map(|(g, b)| format!("{g}.{b}")),
        (
            "[a-z]{2}-[a-z]{4,9}-[1-9]",
            "[0-9]{12}",
            prop_oneof![
                Just("foundation-model"),
                Just("inference-profile"),
                Just("application-inference-profile"),
                Just("provisioned-model"),
            ],
            base,
        )
            .prop_map(|(r, acct, kind, id)| format!("arn:aws:bedrock:{r}:{acct}:{kind}/{id}")),
        // Anything else a caller may put in the label (`%`, spaces, `.`, `..`, Unicode).
        "(\\.|\\.\\.|[ -~]{1,30}|.{1,10})",
    ]
}

fn action() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("converse"),
        Just("converse-stream"),
        Just("invoke"),
        Just("invoke-with-response-stream"),
    ]
}

/// JSON-ish request bodies, with arbitrary Unicode text inside.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<String>().prop_map(|text| serde_json::to_vec(&serde_json::json!({
            "messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": 512}
        }))
        .unwrap()),
        proptest::collection::vec(any::<u8>(), 0..300),
        Just(Vec::new()),
    ]
}

/// Header values as clients send them: printable ASCII with runs of spaces,
/// including leading and trailing ones (which SigV4 trims and collapses).
/// No tabs: aws-sigv4 keeps a tab in a value as is (it trims and collapses only
/// spaces), while botocore and `verify` treat it as whitespace, so the two
/// signers disagree there and the gateway follows botocore.
fn header_value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

fn extra_headers() -> impl Strategy<Value = Vec<(String, String)>> {
    let name = prop_oneof![
        Just("Content-Type".to_owned()),
        Just("Accept".to_owned()),
        Just("X-Amz-User-Agent".to_owned()),
        Just("X-Amzn-Bedrock-Trace".to_owned()),
        Just("X-Amzn-Bedrock-GuardrailIdentifier".to_owned()),
        "[Xx]-[A-Za-z][A-Za-z0-9-]{0,15}",
    ];
    proptest::collection::vec((name, header_value()), 0..6)
}

fn case() -> impl Strategy<Value = Case> {
    (
        (region(), model_id(), action(), body(), extra_headers()),
        (
            "(AKIA|ASIA)[A-Z0-9]{16}",
            "[A-Za-z0-9/+]{40}",
            proptest::option::of("[A-Za-z0-9/+=]{16,64}"),
            any::<bool>(),
            // 2001-09-09 .. 2033-05-18
            1_000_000_000u64..2_000_000_000,
            -(sigv4::MAX_SKEW_SECS)..=sigv4::MAX_SKEW_SECS,
        ),
    )
        .prop_map(
            |(
                (region, model_id, action, body, extra),
                (access_key_id, secret, session_token, content_sha_header, signed_at, skew),
            )| Case {
                region,
                model_id,
                action,
                body,
                extra,
                access_key_id,
                secret,
                session_token,
                content_sha_header,
                signed_at,
                skew,
            },
        )
}

/// Path label encoding of aws-sdk-rust (`aws_smithy_http::label::fmt_string`,
/// non-greedy): every byte but `A-Z a-z 0-9 - . _ ~` is `%XX`, so `:` and `/`
/// in model ids and ARNs are escaped.
fn sdk_label(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A request as it reaches the gateway: headers, raw path, body.
struct Signed {
    raw_path: String,
    headers: Vec<(String, String)>,
}

/// Signs `c` with aws-sigv4 and returns the request as sent.
fn aws_sign(c: &Case) -> Signed {
    let host = format!("bedrock-runtime.{}.amazonaws.com", c.region);
    let raw_path = format!("/model/{}/{}", sdk_label(&c.model_id), c.action);
    let identity: Identity = AwsCredentials::new(
        c.access_key_id.clone(),
        c.secret.clone(),
        c.session_token.clone(),
        None,
        "difftest",
    )
    .into();
    // Bedrock's SDK client signs with the defaults: double-encoded path,
    // normalized path, no x-amz-content-sha256 header.
    let mut settings = SigningSettings::default();
    if c.content_sha_header {
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    }
    settings.session_token_mode = SessionTokenMode::Include;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&c.region)
        .name("bedrock")
        .time(UNIX_EPOCH + Duration::from_secs(c.signed_at))
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        "POST",
        format!("https://{host}{raw_path}"),
        c.extra.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(&c.body),
    )
    .unwrap();
    let (instructions, _sig) = sign(signable, &params).unwrap().into_parts();
    // The HTTP client adds `Host` from the URI; the signer signed it from there.
    let mut headers = vec![("Host".to_owned(), host)];
    headers.extend(c.extra.iter().cloned());
    headers.extend(
        instructions
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned())),
    );
    Signed { raw_path, headers }
}

fn creds(c: &Case) -> Credentials {
    Credentials {
        access_key_id: c.access_key_id.clone(),
        secret_access_key: c.secret.clone(),
        region: c.region.clone(),
        service: "bedrock".to_owned(),
    }
}

fn now(c: &Case) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(c.signed_at as i64 + c.skew).unwrap()
}

fn verify(
    c: &Case,
    s: &Signed,
    headers: &[(String, String)],
    payload_sha256: &str,
) -> Result<String, SigV4Error> {
    let req = SignedRequest {
        method: "POST",
        raw_path: &s.raw_path,
        raw_query: None,
        headers,
        payload_sha256,
    };
    sigv4::verify(&req, &creds(c), now(c))
}

/// Replaces the hex digit at `i` of `s` by another hex digit.
fn flip_hex(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

proptest! {
    // Each case signs and verifies a few times: 64 cases take well under a second.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn aws_signed_requests_verify(c in case()) {
        let s = aws_sign(&c);
        let hash = sigv4::sha256_hex(&c.body);
        prop_assert_eq!(verify(&c, &s, &s.headers, &hash), Ok(c.access_key_id.clone()));
    }

    #[test]
    fn changed_body_hash_is_refused(c in case(), i in 0usize..64) {
        let s = aws_sign(&c);
        let hash = flip_hex(&sigv4::sha256_hex(&c.body), i);
        let got = verify(&c, &s, &s.headers, &hash);
        if c.content_sha_header {
            prop_assert_eq!(got, Err(SigV4Error::PayloadHashMismatch));
        } else {
            prop_assert!(matches!(got, Err(SigV4Error::Mismatch { .. })), "{got:?}");
        }
    }

    #[test]
    fn changed_body_is_refused(c in case(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let s = aws_sign(&c);
        let mut body = c.body.clone();
        if body.is_empty() {
            // A body where none was signed.
            body.push(1 << bit);
        } else {
            body[at.index(c.body.len())] ^= 1 << bit;
        }
        let got = verify(&c, &s, &s.headers, &sigv4::sha256_hex(&body));
        prop_assert!(got.is_err(), "{got:?}");
    }

    #[test]
    fn changed_signature_is_refused(c in case(), i in 0usize..64) {
        let s = aws_sign(&c);
        let mut headers = s.headers.clone();
        let auth = headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .unwrap();
        let at = auth.1.find("Signature=").unwrap() + "Signature=".len();
        auth.1 = flip_hex(&auth.1, at + i);
        let got = verify(&c, &s, &headers, &sigv4::sha256_hex(&c.body));
        prop_assert!(matches!(got, Err(SigV4Error::Mismatch { .. })), "{got:?}");
    }
}

/// A fixed-input anchor for the property above: the ARN path of a cross-region
/// inference profile, signed at a fixed instant.
#[test]
fn aws_signed_arn_path_verifies() {
    let c = Case {
        region: "us-west-2".into(),
        model_id: "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
        action: "converse-stream",
        body: br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#.to_vec(),
        extra: vec![("Content-Type".into(), "application/json".into())],
        access_key_id: "AKIDEXAMPLE".into(),
        secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        session_token: None,
        content_sha_header: false,
        signed_at: 1_700_000_000,
        skew: 0,
    };
    let s = aws_sign(&c);
    assert!(s.raw_path.contains("%3Ainference-profile%2Fus.anthropic"));
    let hash = sigv4::sha256_hex(&c.body);
    assert_eq!(verify(&c, &s, &s.headers, &hash), Ok("AKIDEXAMPLE".into()));
}
