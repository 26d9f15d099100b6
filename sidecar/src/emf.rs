//! CloudWatch Embedded Metric Format output (optional, `--emf-output PATH|stdout`).
//!
//! One JSON line per committed invocation, in the shape the seed deployment's
//! Lambda wrote: namespace `BedrockCostManagement` (overridable), dimensions
//! `TenantID`, `ApplicationID`, `ModelID`, metrics `InvocationCost` (USD),
//! `InputTokens`, `OutputTokens` and `InvocationCount`. The CloudWatch agent (or
//! Lambda/ECS log drivers) turn such lines into metrics, and Logs Insights queries
//! like `stats sum(InvocationCost) by TenantID` work on them unchanged.
//!
//! Costs are written as JSON numbers whose text is the exact decimal (no float
//! round trip). Lines are handed to a dedicated writer thread through a bounded
//! channel; a full channel drops the line (counted, logged) rather than ever
//! blocking a commit.

use crate::error::{Error, Result};
use rust_decimal::Decimal;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

/// The seed deployment's namespace.
pub const DEFAULT_NAMESPACE: &str = "BedrockCostManagement";
/// Dimension value used when a commit carries no application id.
pub const NO_APPLICATION: &str = "none";
/// Lines buffered between the request path and the writer thread.
const CHANNEL_CAPACITY: usize = 10_000;

/// Where EMF lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmfTarget {
    Stdout,
    File(PathBuf),
}

impl EmfTarget {
    /// `stdout` or `-` is standard output; anything else a file (appended to).
    pub fn parse(s: &str) -> Self {
        match s {
            "stdout" | "-" => Self::Stdout,
            path => Self::File(PathBuf::from(path)),
        }
    }
}

/// One committed invocation, as EMF needs it.
#[derive(Debug, Clone)]
pub struct EmfRecord<'a> {
    pub timestamp_ms: i64,
    pub request_id: &'a str,
    pub tenant_id: &'a str,
    pub application_id: Option<&'a str>,
    pub model_id: &'a str,
    pub cost_center: Option<&'a str>,
    pub environment: Option<&'a str>,
    pub cost_usd: Decimal,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Renders one EMF document (a single line, no trailing newline).
pub fn render(namespace: &str, r: &EmfRecord<'_>) -> String {
    let mut doc = json!({
        "_aws": {
            "Timestamp": r.timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [
                    ["TenantID"],
                    ["TenantID", "ModelID"],
                    ["TenantID", "ApplicationID", "ModelID"]
                ],
                "Metrics": [
                    {"Name": "InvocationCost", "Unit": "None"},
                    {"Name": "InputTokens", "Unit": "Count"},
                    {"Name": "OutputTokens", "Unit": "Count"},
                    {"Name": "InvocationCount", "Unit": "Count"}
                ]
            }]
        },
        "TenantID": r.tenant_id,
        "ApplicationID": r.application_id.unwrap_or(NO_APPLICATION),
        "ModelID": r.model_id,
        "InputTokens": r.input_tokens,
        "OutputTokens": r.output_tokens,
        "InvocationCount": 1,
        "RequestID": r.request_id,
    });
    if let Some(obj) = doc.as_object_mut() {
        if let Some(cc) = r.cost_center {
            obj.insert("CostCenter".into(), json!(cc));
        }
        if let Some(env) = r.environment {
            obj.insert("Environment".into(), json!(env));
        }
    }
    // Splice the exact decimal in as a JSON number: a `Value` would go through
    // f64. `Decimal`'s text is always plain JSON number syntax (no exponent).
    let mut line = doc.to_string();
    line.pop(); // the closing brace of the object
    line.push_str(",\"InvocationCost\":");
    line.push_str(&r.cost_usd.normalize().to_string());
    line.push('}');
    line
}

/// Hands EMF lines to the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct EmfWriter {
    namespace: Arc<str>,
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// What the writer thread is handed: a line, or a barrier answered once
/// everything queued before it is written and flushed (shutdown).
#[derive(Debug)]
enum Msg {
    Line(String),
    Flushed(std::sync::mpsc::Sender<()>),
}

impl EmfWriter {
    /// Opens the target (a file is created or appended to) and starts the writer
    /// thread. Errors opening the file are reported here, at startup.
    pub fn start(target: &EmfTarget, namespace: &str) -> Result<Self> {
        let mut out: Box<dyn Write + Send> = match target {
            EmfTarget::Stdout => Box::new(std::io::stdout()),
            EmfTarget::File(path) => {
                if let Some(dir) = path.parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)?;
                    }
                }
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::invalid(format!("cannot open --emf-output {}: {e}", path.display()))
                    })?;
                Box::new(std::io::BufWriter::new(f))
            }
        };
        let (tx, rx) = sync_channel::<Msg>(CHANNEL_CAPACITY);
        std::thread::Builder::new()
            .name("tollgate-emf".into())
            .spawn(move || {
                // Write what is queued, flush when the queue runs dry, then wait.
                while let Ok(msg) = rx.recv() {
                    let mut next = Some(msg);
                    let mut waiting = Vec::new();
                    while let Some(m) = next.take() {
                        match m {
                            Msg::Line(l) => {
                                if let Err(e) = writeln!(out, "{l}") {
                                    tracing::warn!(error = %e, "EMF write failed");
                                }
                            }
                            Msg::Flushed(done) => waiting.push(done),
                        }
                        match rx.try_recv() {
                            Ok(m) => next = Some(m),
                            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
                        }
                    }
                    if let Err(e) = out.flush() {
                        tracing::warn!(error = %e, "EMF flush failed");
                    }
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
            })?;
        Ok(Self {
            namespace: Arc::from(namespace),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues one line; never blocks.
    pub fn record(&self, r: &EmfRecord<'_>) {
        let line = render(&self.namespace, r);
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "EMF output is not keeping up; lines dropped");
                }
            }
        }
    }

    /// Waits (up to `timeout`) until every line queued so far is written and
    /// flushed: at shutdown, so the last commits' lines are not lost. `false` if
    /// the writer did not get there in time.
    pub fn flush(&self, timeout: std::time::Duration) -> bool {
        let (done, flushed) = std::sync::mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut msg = Msg::Flushed(done);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        flushed
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .is_ok()
    }

    /// Lines dropped because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn renders_exact_cost_and_seed_dimensions() {
        let line = render(
            DEFAULT_NAMESPACE,
            &EmfRecord {
                timestamp_ms: 1_795_000_000_000,
                request_id: "r1",
                tenant_id: "acme",
                application_id: None,
                model_id: "m",
                cost_center: Some("cc1"),
                environment: None,
                cost_usd: "0.000012345678901234567".parse().unwrap(),
                input_tokens: 3,
                output_tokens: 4,
            },
        );
        assert!(
            line.ends_with(",\"InvocationCost\":0.000012345678901234567}"),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "BedrockCostManagement");
        assert_eq!(
            cw["Dimensions"][2],
            json!(["TenantID", "ApplicationID", "ModelID"])
        );
        assert_eq!(v["ApplicationID"], "none");
        assert_eq!(v["CostCenter"], "cc1");
        assert!(v.get("Environment").is_none());
        assert_eq!(v["InputTokens"], 3);
        assert_eq!(EmfTarget::parse("-"), EmfTarget::Stdout);
    }

    #[test]
    fn flush_waits_for_every_queued_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emf.log");
        let w = EmfWriter::start(&EmfTarget::File(path.clone()), DEFAULT_NAMESPACE).unwrap();
        for i in 0..500 {
            w.record(&EmfRecord {
                timestamp_ms: i,
                request_id: "r",
                tenant_id: "acme",
                application_id: None,
                model_id: "m",
                cost_center: None,
                environment: None,
                cost_usd: Decimal::ONE,
                input_tokens: 1,
                output_tokens: 1,
            });
        }
        assert!(w.flush(std::time::Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 500);
    }
}
