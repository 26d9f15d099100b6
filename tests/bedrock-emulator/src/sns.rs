//! Amazon SNS `Publish` (Query protocol: `POST /` with a form body
//! `Action=Publish&TopicArn=…&Message=…&MessageAttributes.entry.N…`), so the
//! sidecar's SNS alert target can be tested against the emulator
//! (`AWS_ENDPOINT_URL_SNS`). The request must be SigV4-signed for service
//! `sns` with the emulator's credentials; answers and errors are SNS's XML.
//! Published messages are kept (at most 10,000) for `GET /_emulator/sns` and
//! cleared by `DELETE /_emulator/sns`. A topic whose name ends in `-fail`
//! answers 500 `InternalError`, to exercise retries.

use crate::query::xml;
use crate::query::QueryCall;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tollgate_wire::sigv4::Credentials;

const MAX_KEPT: usize = 10_000;

/// Messages published so far, oldest first.
static PUBLISHED: Mutex<Vec<Value>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Whether a request is an SNS call (`Action=Publish…` form body on `/`).
pub fn is_sns(method: &str, raw_path: &str, body: &[u8]) -> bool {
    method == "POST" && raw_path == "/" && body.starts_with(b"Action=Publish")
}

/// Answers an SNS call.
pub fn handle(creds: &Credentials, call: &QueryCall<'_>, request_id: &str) -> Response {
    if let Err((code, message)) = crate::query::verify(creds, "sns", call) {
        return error(403, code, &message, request_id);
    }
    let access_key_id = creds.access_key_id.clone();
    let f = crate::query::form(call.body);
    let topic = f.get("TopicArn").cloned().unwrap_or_default();
    let parts: Vec<&str> = topic.split(':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" {
        return error(
            400,
            "InvalidParameter",
            "Invalid parameter: TopicArn",
            request_id,
        );
    }
    let Some(message) = f.get("Message").filter(|m| !m.is_empty()) else {
        return error(
            400,
            "InvalidParameter",
            "Invalid parameter: Empty message",
            request_id,
        );
    };
    if parts[5].ends_with("-fail") {
        return error(500, "InternalError", "injected failure", request_id);
    }
    // MessageAttributes.entry.N.Name / .Value.DataType / .Value.StringValue
    let mut attributes = Map::new();
    for n in 1.. {
        let p = format!("MessageAttributes.entry.{n}");
        let Some(name) = f.get(&format!("{p}.Name")) else {
            break;
        };
        attributes.insert(
            name.clone(),
            json!({
                "DataType": f.get(&format!("{p}.Value.DataType")),
                "StringValue": f.get(&format!("{p}.Value.StringValue")),
            }),
        );
    }
    let message_id = format!(
        "00000000-0000-4000-8000-{:012x}",
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    );
    let record = json!({
        "message_id": message_id,
        "topic_arn": topic,
        "message": message,
        "subject": f.get("Subject"),
        "message_attributes": attributes,
        "access_key_id": access_key_id,
    });
    {
        let mut kept = crate::aws::lock(&PUBLISHED);
        if kept.len() >= MAX_KEPT {
            kept.remove(0);
        }
        kept.push(record);
    }
    xml(
        200,
        format!(
            "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\">\n\
             \x20 <PublishResult>\n\
             \x20   <MessageId>{message_id}</MessageId>\n\
             \x20 </PublishResult>\n\
             \x20 <ResponseMetadata>\n\
             \x20   <RequestId>{request_id}</RequestId>\n\
             \x20 </ResponseMetadata>\n\
             </PublishResponse>\n"
        ),
    )
}

/// `GET /_emulator/sns` (published messages, oldest first) and
/// `DELETE /_emulator/sns`; `None` for other inspection paths.
pub fn inspection(method: &str, path: &str) -> Option<Response> {
    if path != "/_emulator/sns" {
        return None;
    }
    let mut kept = crate::aws::lock(&PUBLISHED);
    let body = match method {
        "GET" => Value::Array(kept.clone()),
        "DELETE" => {
            let n = kept.len();
            kept.clear();
            json!({ "cleared": n })
        }
        _ => return None,
    };
    let mut r = Response::new(Body::from(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Some(r)
}

fn error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    crate::query::error(
        "http://sns.amazonaws.com/doc/2010-03-31/",
        status,
        code,
        message,
        request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;
    use tollgate_wire::sigv4::{self, SignedRequest};

    fn creds(service: &str) -> Credentials {
        Credentials {
            access_key_id: "AKIATEST".into(),
            secret_access_key: "secret".into(),
            region: "us-east-1".into(),
            service: service.into(),
        }
    }

    /// Signs `body` as the SDK would (service `service`) and hands it over.
    async fn publish(body: &str, service: &str) -> (u16, String) {
        let amz_date = sigv4::format_amz_date(OffsetDateTime::now_utc());
        let mut headers = vec![
            ("host".to_string(), "127.0.0.1".to_string()),
            ("x-amz-date".to_string(), amz_date.clone()),
            (
                "content-type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let hash = sigv4::sha256_hex(body.as_bytes());
        let auth = sigv4::sign(
            &SignedRequest {
                method: "POST",
                raw_path: "/",
                raw_query: None,
                headers: &headers,
                payload_sha256: &hash,
            },
            &creds(service),
            &amz_date,
        );
        headers.push(("authorization".to_string(), auth));
        let call = QueryCall {
            raw_path: "/",
            raw_query: None,
            headers: &headers,
            body: body.as_bytes(),
        };
        let r = handle(&creds("bedrock"), &call, "rid");
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn publish_is_verified_recorded_and_can_fail() {
        let topic = "arn%3Aaws%3Asns%3Aus-east-1%3A123456789012%3Aunit-test-topic";
        let body = format!(
            "Action=Publish&Version=2010-03-31&TopicArn={topic}&Message=%7B%22a%22%3A1%7D\
             &MessageAttributes.entry.1.Name=alertId&MessageAttributes.entry.1.Value.DataType=String\
             &MessageAttributes.entry.1.Value.StringValue=al_1"
        );
        let (status, xml) = publish(&body, "sns").await;
        assert_eq!(status, 200, "{xml}");
        assert!(xml.contains("<MessageId>"), "{xml}");
        let kept = PUBLISHED.lock().unwrap().clone();
        let mine = kept
            .iter()
            .find(|m| {
                m["topic_arn"]
                    .as_str()
                    .is_some_and(|t| t.ends_with(":unit-test-topic"))
            })
            .expect("recorded");
        assert_eq!(mine["message"], r#"{"a":1}"#);
        assert_eq!(mine["message_attributes"]["alertId"]["StringValue"], "al_1");
        // Signed for another service: refused.
        let (status, xml) = publish(&body, "sts").await;
        assert_eq!(status, 403, "{xml}");
        assert!(xml.contains("SignatureDoesNotMatch"), "{xml}");
        // Not an SNS topic ARN.
        let (status, xml) = publish("Action=Publish&TopicArn=nope&Message=x", "sns").await;
        assert_eq!(status, 400, "{xml}");
        assert!(xml.contains("InvalidParameter"), "{xml}");
        // A `-fail` topic answers 500 (retries).
        let (status, xml) = publish(
            "Action=Publish&TopicArn=arn:aws:sns:us-east-1:1:x-fail&Message=x",
            "sns",
        )
        .await;
        assert_eq!(status, 500, "{xml}");
        assert!(xml.contains("<Type>Receiver</Type>"), "{xml}");
    }

    #[test]
    fn only_publish_is_sns() {
        assert!(is_sns("POST", "/", b"Action=Publish&x"));
        assert!(!is_sns("POST", "/", b"Action=GetCallerIdentity"));
    }
}
