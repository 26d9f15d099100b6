//! STS `GetCallerIdentity` (Query protocol, `POST /` with a form body), so
//! `tollgate-sidecar doctor` can check credentials against the emulator as it
//! does against AWS. The request must be SigV4-signed for service `sts` with the
//! emulator's credentials; answers and errors are STS's XML.

use crate::query::{xml, QueryCall};
use axum::response::Response;
use tollgate_wire::sigv4::Credentials;

/// The account and identity the emulator answers with.
pub const ACCOUNT: &str = "123456789012";
pub const ARN: &str = "arn:aws:iam::123456789012:user/tollgate-emulator";

/// Whether a request is an STS call (`Action=…` form body on `/`).
pub fn is_sts(method: &str, raw_path: &str, body: &[u8]) -> bool {
    method == "POST" && raw_path == "/" && body.starts_with(b"Action=")
}

/// Answers an STS call.
pub fn handle(creds: &Credentials, call: &QueryCall<'_>, request_id: &str) -> Response {
    let form = crate::query::form(call.body);
    let action = form.get("Action").map(String::as_str).unwrap_or_default();
    if action != "GetCallerIdentity" {
        return error(
            400,
            "InvalidAction",
            &format!("Could not find operation {action} for version NO_VERSION_SPECIFIED"),
            request_id,
        );
    }
    if let Err((code, message)) = crate::query::verify(creds, "sts", call) {
        return error(403, code, &message, request_id);
    }
    xml(
        200,
        format!(
            "<GetCallerIdentityResponse xmlns=\"{NAMESPACE}\">\n\
             \x20 <GetCallerIdentityResult>\n\
             \x20   <Arn>{ARN}</Arn>\n\
             \x20   <UserId>AIDAEMULATOR0000000000</UserId>\n\
             \x20   <Account>{ACCOUNT}</Account>\n\
             \x20 </GetCallerIdentityResult>\n\
             \x20 <ResponseMetadata>\n\
             \x20   <RequestId>{request_id}</RequestId>\n\
             \x20 </ResponseMetadata>\n\
             </GetCallerIdentityResponse>\n"
        ),
    )
}

const NAMESPACE: &str = "https://sts.amazonaws.com/doc/2011-06-15/";

fn error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    crate::query::error(NAMESPACE, status, code, message, request_id)
}
