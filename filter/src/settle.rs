//! Turning what the gateway saw of a response into the ledger entry: a commit of
//! the usage (exact, or estimated and flagged), or a release of the hold.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tollgate_wire::api::{Commit, ReleaseRequest, Usage};

/// What the response showed, from headers to the last byte (or the abort).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseOutcome {
    /// `None` when no response headers arrived (client abort, stream reset).
    pub status: Option<u16>,
    /// Usage reported by Bedrock, possibly partial (e.g. `message_start` only).
    pub usage: Option<Usage>,
    /// Bedrock's final usage arrived (JSON body, token headers, `metadata` event,
    /// `amazon-bedrock-invocationMetrics`).
    pub final_usage: bool,
    /// Output tokens estimated from generated text seen, for cut streams.
    pub estimated_output_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Settlement {
    Commit(Commit),
    Release { request_id: String, reason: String },
}

impl Settlement {
    pub fn request_id(&self) -> &str {
        match self {
            Settlement::Commit(c) => &c.request_id,
            Settlement::Release { request_id, .. } => request_id,
        }
    }
}

/// A settlement on its way to the sidecar: what kind it is, and the JSON the
/// sidecar reads (a [`Commit`], or a [`ReleaseRequest`]). The stream that settles
/// encodes it once; the root context batches these bytes as they are, instead of
/// parsing every settlement back and serialising it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub kind: QueuedKind,
    pub json: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedKind {
    Commit,
    /// A commit flagged `estimated`.
    EstimatedCommit,
    Release,
}

impl QueuedKind {
    /// The first byte of a queue message.
    fn tag(self) -> u8 {
        match self {
            Self::Commit => b'C',
            Self::EstimatedCommit => b'E',
            Self::Release => b'R',
        }
    }
}

#[derive(Debug, Error)]
pub enum QueueError {
    #[error("empty settlement message")]
    Empty,
    #[error("settlement message with unknown tag {0:#04x}")]
    Tag(u8),
    #[error("unreadable settlement: {0}")]
    Json(#[from] serde_json::Error),
}

impl Queued {
    pub fn new(s: &Settlement) -> Result<Self, serde_json::Error> {
        Ok(match s {
            Settlement::Commit(c) => Self {
                kind: if c.estimated {
                    QueuedKind::EstimatedCommit
                } else {
                    QueuedKind::Commit
                },
                json: serde_json::to_vec(c)?,
            },
            Settlement::Release { request_id, reason } => Self {
                kind: QueuedKind::Release,
                json: serde_json::to_vec(&ReleaseRequest {
                    request_id: request_id.clone(),
                    reason: reason.clone(),
                })?,
            },
        })
    }

    /// The shared-queue message: a tag byte, then the JSON.
    pub fn to_message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(self.json.len() + 1);
        m.push(self.kind.tag());
        m.extend_from_slice(&self.json);
        m
    }

    /// Reads a queue message. A message that starts with `{` is a whole
    /// [`Settlement`] as JSON, the format before the tag (a VM of the previous
    /// build can still be draining into the same queue during a reload).
    pub fn from_message(m: &[u8]) -> Result<Self, QueueError> {
        let (&tag, json) = m.split_first().ok_or(QueueError::Empty)?;
        let kind = match tag {
            b'C' => QueuedKind::Commit,
            b'E' => QueuedKind::EstimatedCommit,
            b'R' => QueuedKind::Release,
            b'{' => return Ok(Self::new(&serde_json::from_slice::<Settlement>(m)?)?),
            other => return Err(QueueError::Tag(other)),
        };
        Ok(Self {
            kind,
            json: json.to_vec(),
        })
    }

    pub fn is_commit(&self) -> bool {
        self.kind != QueuedKind::Release
    }

    /// The `/v1/commit` body (`CommitBatch`) of these commits.
    pub fn commit_batch<'a>(commits: impl IntoIterator<Item = &'a Queued>) -> Vec<u8> {
        let mut body = b"{\"commits\":[".to_vec();
        for (i, q) in commits.into_iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&q.json);
        }
        body.extend_from_slice(b"]}");
        body
    }
}

/// Bedrock bills what it processed. An error status means nothing was charged;
/// a 2xx that ended without final usage (stream cut, corrupt frame, mid-stream
/// exception, client gone) is charged from what was seen and flagged `estimated`;
/// no response at all after the request was forwarded is charged the input
/// estimate, since Bedrock may have processed the prompt.
///
/// An estimated commit never exceeds what the request could have cost: output is
/// capped at `max_output_tokens` (the limit enforced upstream, i.e. the clamped
/// value; `None` only when no limit is known, e.g. forwarded without a hold and
/// without a stated limit) and input, cache reads and cache writes together at
/// `input_tokens_estimate` (the hold's input part). A reported final usage is
/// passed through unchanged: it is Bedrock's own count, and the sidecar caps and
/// flags it against the hold.
pub fn settle(
    request_id: &str,
    input_tokens_estimate: u64,
    max_output_tokens: Option<u64>,
    outcome: &ResponseOutcome,
) -> Settlement {
    let commit = |usage: Usage, estimated: bool| {
        Settlement::Commit(Commit {
            request_id: request_id.to_owned(),
            usage,
            estimated,
            unreserved: None,
            lease: None,
        })
    };
    match outcome.status {
        Some(s) if !(200..300).contains(&s) => Settlement::Release {
            request_id: request_id.to_owned(),
            reason: format!("upstream status {s}"),
        },
        Some(_) => match (outcome.final_usage, outcome.usage) {
            (true, Some(usage)) => commit(usage, false),
            (_, partial) => {
                let partial = partial.unwrap_or_default();
                let input = if partial.input_tokens > 0 {
                    partial.input_tokens
                } else {
                    input_tokens_estimate
                };
                let usage = Usage {
                    input_tokens: input,
                    output_tokens: partial.output_tokens.max(outcome.estimated_output_tokens),
                    ..partial
                };
                commit(
                    cap_estimate(usage, input_tokens_estimate, max_output_tokens),
                    true,
                )
            }
        },
        None => commit(
            Usage {
                input_tokens: input_tokens_estimate,
                ..Usage::default()
            },
            true,
        ),
    }
}

/// Caps an estimated usage at the hold: output at the enforced limit; input
/// tokens first, then cache writes, then cache reads, so that together they stay
/// within the input estimate.
fn cap_estimate(usage: Usage, input_estimate: u64, max_output: Option<u64>) -> Usage {
    let mut left = input_estimate;
    let mut take = |n: u64| {
        let t = n.min(left);
        left -= t;
        t
    };
    let input_tokens = take(usage.input_tokens);
    let cache_write_input_tokens = take(usage.cache_write_input_tokens);
    let cache_read_input_tokens = take(usage.cache_read_input_tokens);
    Usage {
        input_tokens,
        output_tokens: max_output.map_or(usage.output_tokens, |m| usage.output_tokens.min(m)),
        cache_read_input_tokens,
        cache_write_input_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn usage(i: u64, o: u64) -> Usage {
        Usage {
            input_tokens: i,
            output_tokens: o,
            ..Usage::default()
        }
    }

    #[test]
    fn queued_settlements_batch_as_the_sidecar_reads_them() {
        use tollgate_wire::api::CommitBatch;
        let exact = settle(
            "r1",
            10,
            Some(5),
            &ResponseOutcome {
                status: Some(200),
                usage: Some(usage(3, 4)),
                final_usage: true,
                ..Default::default()
            },
        );
        let estimated = settle(
            "r2",
            10,
            Some(5),
            &ResponseOutcome {
                status: Some(200),
                ..Default::default()
            },
        );
        let release = settle(
            "r3",
            10,
            Some(5),
            &ResponseOutcome {
                status: Some(500),
                ..Default::default()
            },
        );
        let mut queued = Vec::new();
        for (s, kind) in [
            (&exact, QueuedKind::Commit),
            (&estimated, QueuedKind::EstimatedCommit),
            (&release, QueuedKind::Release),
        ] {
            let q = Queued::new(s).unwrap();
            assert_eq!(q.kind, kind);
            let back = Queued::from_message(&q.to_message()).unwrap();
            assert_eq!(back, q);
            // The format before the tag still reads the same.
            let legacy = Queued::from_message(&serde_json::to_vec(s).unwrap()).unwrap();
            assert_eq!(legacy, q);
            queued.push(q);
        }
        let batch: CommitBatch = serde_json::from_slice(&Queued::commit_batch(
            queued.iter().filter(|q| q.is_commit()),
        ))
        .unwrap();
        let commits: Vec<Commit> = [exact, estimated]
            .into_iter()
            .filter_map(|s| match s {
                Settlement::Commit(c) => Some(c),
                Settlement::Release { .. } => None,
            })
            .collect();
        assert_eq!(batch, CommitBatch { commits });
        let empty: CommitBatch = serde_json::from_slice(&Queued::commit_batch([])).unwrap();
        assert!(empty.commits.is_empty());
        let release: ReleaseRequest = serde_json::from_slice(&queued[2].json).unwrap();
        assert_eq!(release.request_id, "r3");
        assert!(Queued::from_message(b"").is_err());
        assert!(Queued::from_message(b"X{}").is_err());
        assert!(Queued::from_message(b"{nope").is_err());
    }

    #[test]
    fn final_usage_commits_exactly() {
        let s = settle(
            "r",
            999,
            Some(100),
            &ResponseOutcome {
                status: Some(200),
                usage: Some(usage(10, 20)),
                final_usage: true,
                estimated_output_tokens: 50,
            },
        );
        assert_eq!(
            s,
            Settlement::Commit(Commit {
                request_id: "r".into(),
                usage: usage(10, 20),
                estimated: false,
                unreserved: None,
                lease: None,
            })
        );
    }

    #[test]
    fn errors_release() {
        for status in [400, 403, 429, 500, 503] {
            let s = settle(
                "r",
                5,
                Some(100),
                &ResponseOutcome {
                    status: Some(status),
                    ..Default::default()
                },
            );
            assert!(matches!(s, Settlement::Release { .. }), "{status}");
        }
    }

    #[test]
    fn cut_stream_commits_an_estimate() {
        let s = settle(
            "r",
            900,
            Some(100),
            &ResponseOutcome {
                status: Some(200),
                usage: Some(usage(21, 2)),
                final_usage: false,
                estimated_output_tokens: 7,
            },
        );
        assert_eq!(
            s,
            Settlement::Commit(Commit {
                request_id: "r".into(),
                usage: usage(21, 7),
                estimated: true,
                unreserved: None,
                lease: None,
            })
        );
        let s = settle(
            "r",
            900,
            Some(100),
            &ResponseOutcome {
                status: Some(200),
                usage: None,
                final_usage: false,
                estimated_output_tokens: 0,
            },
        );
        assert_eq!(
            s,
            Settlement::Commit(Commit {
                request_id: "r".into(),
                usage: usage(900, 0),
                estimated: true,
                unreserved: None,
                lease: None,
            })
        );
    }

    #[test]
    fn no_response_charges_the_input_estimate() {
        let s = settle("r", 42, Some(100), &ResponseOutcome::default());
        assert_eq!(
            s,
            Settlement::Commit(Commit {
                request_id: "r".into(),
                usage: usage(42, 0),
                estimated: true,
                unreserved: None,
                lease: None,
            })
        );
    }

    fn estimated(s: Settlement) -> Usage {
        match s {
            Settlement::Commit(c) => {
                assert!(c.estimated);
                c.usage
            }
            other => panic!("expected an estimated commit, got {other:?}"),
        }
    }

    #[test]
    fn a_broken_one_token_stream_is_charged_at_most_one_output_token() {
        let outcome = ResponseOutcome {
            status: Some(200),
            usage: Some(usage(21, 1)),
            final_usage: false,
            // "Hello world" seen: 11 bytes, 4 estimated tokens.
            estimated_output_tokens: 4,
        };
        assert_eq!(estimated(settle("r", 900, Some(1), &outcome)), usage(21, 1));
        // Partial usage over the limit is capped as well.
        let outcome = ResponseOutcome {
            usage: Some(usage(21, 50)),
            ..outcome
        };
        assert_eq!(
            estimated(settle("r", 900, Some(10), &outcome)),
            usage(21, 10)
        );
        // Without a known limit the estimate stands.
        assert_eq!(estimated(settle("r", 900, None, &outcome)), usage(21, 50));
    }

    #[test]
    fn estimated_input_never_exceeds_the_input_estimate() {
        let outcome = ResponseOutcome {
            status: Some(200),
            usage: Some(Usage {
                input_tokens: 80,
                output_tokens: 3,
                cache_read_input_tokens: 50,
                cache_write_input_tokens: 30,
            }),
            final_usage: false,
            estimated_output_tokens: 0,
        };
        assert_eq!(
            estimated(settle("r", 100, Some(5), &outcome)),
            Usage {
                input_tokens: 80,
                output_tokens: 3,
                cache_read_input_tokens: 0,
                cache_write_input_tokens: 20,
            }
        );
        // A cut JSON body estimated from its size cannot exceed the limit either.
        let cut = ResponseOutcome {
            status: Some(200),
            usage: None,
            final_usage: false,
            estimated_output_tokens: 10_000,
        };
        assert_eq!(estimated(settle("r", 7, Some(256), &cut)), usage(7, 256));
    }

    #[test]
    fn reported_final_usage_passes_through_unchanged() {
        let outcome = ResponseOutcome {
            status: Some(200),
            usage: Some(usage(5000, 900)),
            final_usage: true,
            estimated_output_tokens: 0,
        };
        match settle("r", 10, Some(1), &outcome) {
            Settlement::Commit(c) => {
                assert!(!c.estimated);
                assert_eq!(c.usage, usage(5000, 900));
            }
            other => panic!("{other:?}"),
        }
    }
}
