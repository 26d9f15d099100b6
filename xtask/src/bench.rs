//! `cargo xtask bench`: the benchmark report of DESIGN §6.
//!
//! One run, one machine, one emulator upstream, four gateways side by side:
//!
//! - **A**: Envoy with the Tollgate filter, the sidecar and `aws_request_signing`;
//! - **B**: the same Envoy configuration without the Tollgate filter (signing kept);
//! - **C**: B plus the reference Wasm filter (`filter/examples/wasm_baseline.rs`),
//!   which only reads headers and bodies: the price of any body-reading filter;
//! - **D**: C plus a shared-data lease admission per request: what sharing one
//!   lease among an Envoy's workers would add to the request path.
//!
//! Both listeners speak plain HTTP (the template's downstream TLS block is
//! removed) so the numbers isolate the filter's cost, not the TLS handshake's.
//! Load comes from `hey` (Converse) and `curl` (ConverseStream time to first
//! byte); two examples measure the sidecar's reserve+commit rate and the
//! event-stream decoder. The report goes to stdout and `.tollgate/bench/report.md`.

use crate::plan;
use crate::setup::{self, have, Tools};
use crate::stack::{self, Ports, Stack};
use crate::{repo_root, run, state_dir};
use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const TENANT: &str = "bench";
/// Runs the filter's benchmark examples, built for wasm32-wasip1, under node.
const WASI_RUNNER: &str = include_str!("wasi-run.mjs");

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Seconds per load run (each gateway, each concurrency).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent connections for the latency runs.
    #[arg(long, default_value_t = 8)]
    concurrency: u32,
    /// Concurrent connections for the maximum-throughput runs.
    #[arg(long, default_value_t = 64)]
    max_concurrency: u32,
    /// Concurrent connections for the unsaturated latency runs (A, B and C).
    #[arg(long, default_value_t = 1)]
    light_concurrency: u32,
    /// Sequential ConverseStream requests per gateway for time to first byte.
    #[arg(long, default_value_t = 50)]
    ttfb_requests: u32,
    /// Concurrent tasks of the sidecar reserve+commit load.
    #[arg(long, default_value_t = 16)]
    sidecar_concurrency: u32,
}

/// What `hey` reported for one run.
#[derive(Debug, Clone, Default, PartialEq)]
struct HeyResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    /// Non-200 responses and transport errors.
    failed: u64,
    failures: Vec<String>,
}

pub fn bench(tools: &Tools, args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    let hey = ensure_tool("hey", &["-h"], "hey")?;
    ensure_tool("curl", &["--version"], "curl")?;

    setup::build_wasm(tools)?;
    let [baseline_wasm, decode_wasm, request_path_wasm]: [PathBuf; 3] = setup::build_wasm_examples(
        tools,
        &["wasm_baseline", "decode_throughput", "request_path"],
    )?
    .try_into()
    .map_err(|_| anyhow::anyhow!("three Wasm examples expected"))?;
    let node = ensure_tool("node", &["--version"], "nodejs")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("build: sidecar, emulator and benchmark examples (release)");
    run(Command::new(&cargo).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tollgate-sidecar",
        "-p",
        "bedrock-emulator",
    ]))?;
    run(Command::new(&cargo).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tollgate-sidecar",
        "--example",
        "reserve_commit_load",
    ]))?;
    run(Command::new(&cargo).args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tollgate-filter",
        "--example",
        "decode_throughput",
        "--example",
        "request_path",
    ]))?;
    let bin = tools.bin_dir(true);

    let dir = state_dir().join("bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    // Decoder first, while nothing else competes for the CPU.
    println!("bench: event-stream decode throughput (native, 16 KiB chunks)");
    let decode = json_output(
        Command::new(bin.join("examples/decode_throughput")),
        Duration::from_secs(300),
    )
    .context("running the decode_throughput example")?;
    println!("bench: the filter's request path (native), and both examples under node's V8");
    let mut native_path = Command::new(bin.join("examples/request_path"));
    native_path.arg("100000");
    let request_path = json_output(native_path, Duration::from_secs(300))
        .context("running the request_path example")?;
    let runner = dir.join("wasi-run.mjs");
    std::fs::write(&runner, WASI_RUNNER)?;
    let under_v8 = |wasm: &Path, arg: &str| -> Result<Value> {
        let mut cmd = Command::new(&node);
        cmd.arg("--no-warnings").arg(&runner).arg(wasm).arg(arg);
        json_output(cmd, Duration::from_secs(300))
            .with_context(|| format!("running {} under node", wasm.display()))
    };
    // 32 MiB: node 20 sometimes crashes at exit after a 64 MiB run (a larger
    // Wasm memory); the throughput is the same.
    let decode_v8 = under_v8(&decode_wasm, "32")?;
    let request_path_v8 = under_v8(&request_path_wasm, "100000")?;

    let [pa, pb, pc, pd]: [Ports; 4] = port_sets(4)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("four port sets expected"))?;
    let mut stack = Stack::new(dir.clone())?;
    println!(
        "bench: starting emulator, sidecar and four Envoys (logs in {})",
        dir.join("logs").display()
    );
    stack.launch("emulator", &plan::emulator(&bin, pa))?;

    let admin_token = stack::random_token()?;
    let secret_key = stack::secret_key()?;
    let filter_token_file = stack.filter_token().file.clone();
    let sidecar = plan::sidecar(
        &bin,
        pa,
        &plan::SidecarSpec {
            db: &dir.join("ledger.db"),
            filter_token_file: &filter_token_file,
            admin_token: &admin_token,
            secret_key: &secret_key,
            seed: None,
            dynamodb: false,
        },
    );
    stack.launch("sidecar", &sidecar)?;

    let config = |p: Ports| -> Result<String> {
        plain_http(&stack::emulator_envoy_config(tools, p, "us-east-1")?)
    };
    start_envoy(&mut stack, tools, &dir, "envoy-a", &config(pa)?, pa, 2)?;
    let without = without_tollgate(&config(pb)?)?;
    start_envoy(&mut stack, tools, &dir, "envoy-b", &without, pb, 2)?;
    let c_config = reference_filter(&config(pc)?, tools, &baseline_wasm, false)?;
    start_envoy(&mut stack, tools, &dir, "envoy-c", &c_config, pc, 2)?;
    let d_config = reference_filter(&config(pd)?, tools, &baseline_wasm, true)?;
    start_envoy(&mut stack, tools, &dir, "envoy-d", &d_config, pd, 2)?;

    let sidecar_url = format!("http://127.0.0.1:{}", pa.sidecar);
    let key = provision(&sidecar_url, &admin_token)?;

    let url = |p: Ports, op: &str| format!("http://127.0.0.1:{}/model/{MODEL}/{op}", p.listener);
    let body = converse_body();
    for (name, p) in [("A", pa), ("B", pb), ("C", pc), ("D", pd)] {
        let (code, text) = curl(
            "POST",
            &url(p, "converse"),
            Some(&format!("Bearer {key}")),
            Some(&body),
        )?;
        if code != 200 || !text.contains("\"usage\"") {
            bail!("gateway {name} did not answer a Converse call (HTTP {code}): {text}");
        }
    }

    let load = |p: Ports, c: u32, secs: u64| -> Result<HeyResult> {
        run_hey(&hey, &url(p, "converse"), &key, &body, c, secs, &dir)
    };
    let gateways = [("A", pa), ("B", pb), ("C", pc), ("D", pd)];
    println!("bench: warm-up (2 s each)");
    for (_, p) in gateways {
        load(p, args.concurrency, 2)?;
    }
    let c = args.concurrency;
    let cmax = args.max_concurrency;
    let s = args.seconds;
    println!("bench: latency, Converse, hey -z {s}s -c {c}: A, B, C, D");
    let mut lat = Vec::new();
    for (name, p) in gateways {
        lat.push(checked(load(p, c, s)?, name, c)?);
    }
    println!("bench: throughput, Converse, hey -z {s}s -c {cmax}: A, B, C, D");
    let mut max = Vec::new();
    let mut cpu = Vec::new();
    for (name, p) in gateways {
        let before = cpu_snapshot(&stack)?;
        let r = checked(load(p, cmax, s)?, name, cmax)?;
        let after = cpu_snapshot(&stack)?;
        cpu.push(after.per_request_since(&before, &r));
        max.push(r);
    }
    let lc = args.light_concurrency;
    println!("bench: latency below saturation, Converse, hey -z {s}s -c {lc}: A, B, C");
    let mut light = Vec::new();
    for (name, p) in &gateways[..3] {
        light.push(checked(load(*p, lc, s)?, name, lc)?);
    }
    let [light_a, light_b, light_c]: [HeyResult; 3] = light
        .try_into()
        .map_err(|_| anyhow::anyhow!("three runs"))?;
    let [lat_a, lat_b, lat_c, lat_d]: [HeyResult; 4] =
        lat.try_into().map_err(|_| anyhow::anyhow!("four runs"))?;
    let [max_a, max_b, max_c, max_d]: [HeyResult; 4] =
        max.try_into().map_err(|_| anyhow::anyhow!("four runs"))?;
    let [cpu_a, cpu_b, cpu_c, cpu_d]: [CpuSnapshot; 4] =
        cpu.try_into().map_err(|_| anyhow::anyhow!("four runs"))?;

    println!(
        "bench: ConverseStream time to first byte, {} sequential requests each (interleaved)",
        args.ttfb_requests
    );
    let [ttfb_a, ttfb_b, ttfb_c]: [Vec<f64>; 3] = ttfb(
        &[
            url(pa, "converse-stream"),
            url(pb, "converse-stream"),
            url(pc, "converse-stream"),
        ],
        &key,
        &body,
        args.ttfb_requests,
    )?
    .try_into()
    .map_err(|_| anyhow::anyhow!("three TTFB samples"))?;

    let rss_a = rss(&stack, "envoy-a")?;
    let rss_b = rss(&stack, "envoy-b")?;
    let rss_c = rss(&stack, "envoy-c")?;
    let rss_emulator = rss(&stack, "emulator")?;

    println!(
        "bench: sidecar reserve+commit, {} tasks for {s} s",
        args.sidecar_concurrency
    );
    let mut rc = Command::new(bin.join("examples/reserve_commit_load"));
    rc.env("TOLLGATE_FILTER_TOKEN", &stack.filter_token().token)
        .args([&sidecar_url, &key, MODEL])
        .arg(args.sidecar_concurrency.to_string())
        .arg(s.to_string());
    let reserve_commit = json_output(rc, Duration::from_secs(s + 60))
        .context("running the reserve_commit_load example")?;
    let rss_sidecar = rss(&stack, "sidecar")?;

    // The reference gateways are done; the contention runs start their own.
    for name in ["envoy-b", "envoy-c", "envoy-d"] {
        stack.stop_one(name);
    }
    // Then with one worker per Envoy: one lease per Envoy, as sharing it would give.
    let mut contended = Vec::new();
    for workers in [2, 1] {
        println!(
            "bench: overspend under contention: 4 gateways × {workers} worker(s), 1 tenant, 200 concurrent requests"
        );
        contended.push(contention(
            &mut stack,
            tools,
            &dir,
            &hey,
            pa,
            &sidecar_url,
            &admin_token,
            &body,
            workers,
        )?);
    }
    stack.stop();

    let m = Measured {
        args: args.clone(),
        lat_a,
        lat_b,
        lat_c,
        lat_d,
        light_a,
        light_b,
        light_c,
        max_a,
        max_b,
        max_c,
        max_d,
        ttfb_a,
        ttfb_b,
        ttfb_c,
        rss_a,
        rss_b,
        rss_c,
        rss_sidecar,
        rss_emulator,
        cpu_a,
        cpu_b,
        cpu_c,
        cpu_d,
        reserve_commit,
        decode,
        decode_v8,
        request_path,
        request_path_v8,
        node_version: Command::new(&node)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        body_bytes: body.len(),
        contention: contended
            .try_into()
            .map_err(|_| anyhow::anyhow!("two contention runs"))?,
        baseline_wasm_bytes: std::fs::metadata(&baseline_wasm)
            .map(|m| m.len())
            .unwrap_or(0),
        wasm_bytes: std::fs::metadata(tools.wasm_path())
            .map(|m| m.len())
            .unwrap_or(0),
    };
    let report = report(&m, &machine(tools))?;
    let path = dir.join("report.md");
    std::fs::write(&path, &report)?;
    println!("\n{report}");
    println!(
        "bench: report written to {} ({:.0} s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The tool on PATH, installed from Debian when missing and we are root.
fn ensure_tool(cmd: &str, probe: &[&str], package: &str) -> Result<PathBuf> {
    let found = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(cmd))
                .find(|p| p.is_file())
        })
    };
    if let Some(p) = found() {
        return Ok(p);
    }
    let line = format!("apt-get update && apt-get install -y {package}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark needs `{cmd}`; install it as root:\n    sudo sh -c '{line}'");
    }
    println!("bench: installing {package} (Debian)");
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let p = found().with_context(|| format!("{package} installed but `{cmd}` is not on PATH"))?;
    let _ = have(cmd, probe);
    Ok(p)
}

/// Two port sets sharing nothing: A's, and B's listener and admin ports
/// (B reuses A's emulator and sidecar ports).
/// `n` sets of ports sharing one sidecar and emulator, each with its own
/// listener and Envoy admin port.
fn port_sets(n: usize) -> Result<Vec<Ports>> {
    let first = Ports::ephemeral()?;
    let mut used = vec![
        first.listener,
        first.envoy_admin,
        first.sidecar,
        first.emulator,
    ];
    let mut sets = vec![first];
    for _ in 0..20 * n {
        if sets.len() == n {
            return Ok(sets);
        }
        let p = Ports::ephemeral()?;
        if !used.contains(&p.listener) && !used.contains(&p.envoy_admin) {
            used.extend([p.listener, p.envoy_admin]);
            sets.push(Ports {
                listener: p.listener,
                envoy_admin: p.envoy_admin,
                ..first
            });
        }
    }
    bail!("could not find free loopback ports")
}

/// The rendered emulator config with the downstream TLS block removed.
fn plain_http(config: &str) -> Result<String> {
    let lines: Vec<&str> = config.lines().collect();
    let start = lines
        .iter()
        .position(|l| *l == "    - transport_socket:")
        .context("envoy/emulator.yaml: no downstream transport_socket block")?;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| *l == "      filters:")
            .context("envoy/emulator.yaml: no `filters:` after the transport_socket block")?;
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.push("    - filters:");
    out.extend(&lines[end + 1..]);
    Ok(out.join("\n") + "\n")
}

/// The config without the `- name: tollgate` HTTP filter.
fn without_tollgate(config: &str) -> Result<String> {
    let lines: Vec<&str> = config.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_start() == "- name: tollgate")
        .context("envoy config: no `- name: tollgate` filter")?;
    let indent = &lines[start][..lines[start].len() - lines[start].trim_start().len()];
    let next = format!("{indent}- name: ");
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .position(|l| l.starts_with(&next))
            .context("envoy config: nothing after the tollgate filter")?;
    let mut out: Vec<&str> = lines[..start].to_vec();
    out.extend(&lines[end..]);
    Ok(out.join("\n") + "\n")
}

/// The config with the Tollgate filter's code and configuration replaced by the
/// reference filter (`filter/examples/wasm_baseline.rs`), in the same place of
/// the chain with the same Wasm settings.
fn reference_filter(
    config: &str,
    tools: &Tools,
    wasm: &Path,
    shared_lease: bool,
) -> Result<String> {
    let filter = tools.wasm_path().display().to_string();
    let settings = r#"{"sidecar_cluster": "tollgate_sidecar", "failure_mode": "closed"}"#;
    if !config.contains(&filter) || !config.contains(settings) {
        bail!("envoy config: the Tollgate filter's code path or configuration not found");
    }
    Ok(config
        .replace(&filter, &wasm.display().to_string())
        .replace(settings, &format!(r#"{{"shared_lease": {shared_lease}}}"#)))
}

fn start_envoy(
    stack: &mut Stack,
    tools: &Tools,
    dir: &Path,
    name: &'static str,
    config: &str,
    ports: Ports,
    workers: u32,
) -> Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let launch = plan::envoy(
        &tools.envoy(),
        &path,
        ports,
        workers,
        &stack.filter_token().token,
    );
    stack.launch(name, &launch)?;
    let addr: SocketAddr = ([127, 0, 0, 1], ports.listener).into();
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("{name} listener {addr} not accepting"))?;
    Ok(())
}

/// `curl` one request: (status, body). Bounded by `--max-time`.
fn curl(method: &str, url: &str, auth: Option<&str>, body: Option<&str>) -> Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method])
        .args(["-H", "Content-Type: application/json"])
        .args(["-w", "\n%{http_code}"]);
    if let Some(a) = auth {
        cmd.args(["-H", &format!("Authorization: {a}")]);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.arg(url).output().context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    if !out.status.success() {
        bail!(
            "curl {method} {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((code, body.to_owned()))
}

/// A tenant with a budget no run can exhaust, a price, and a bearer key.
fn provision(sidecar: &str, admin_token: &str) -> Result<String> {
    let auth = format!("Bearer {admin_token}");
    let admin = |method: &str, path: &str, body: &str, want: u16| -> Result<String> {
        let (code, text) = curl(method, &format!("{sidecar}{path}"), Some(&auth), Some(body))?;
        if code != want {
            bail!("sidecar {method} {path}: HTTP {code}: {text}");
        }
        Ok(text)
    };
    admin(
        "PUT",
        &format!("/v1/pricing/{}", MODEL.replace(':', "%3A")),
        r#"{"input": "0.25", "output": "1.25"}"#,
        200,
    )?;
    admin(
        "PUT",
        &format!("/v1/tenants/{TENANT}"),
        r#"{"budget_usd": "1000000000", "alert_threshold": "0.99", "reset_cycle": "none", "active": true}"#,
        200,
    )?;
    let text = admin(
        "POST",
        &format!("/v1/tenants/{TENANT}/keys"),
        r#"{"application_id": null}"#,
        201,
    )?;
    let v: Value = serde_json::from_str(&text).context("key response")?;
    v["key"]
        .as_str()
        .map(str::to_owned)
        .context("key response has no `key`")
}

/// A Converse body of a typical short chat turn (~1 KB).
fn converse_body() -> String {
    let text = "Summarise the following paragraph in two sentences. ".repeat(16);
    serde_json::json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 128},
    })
    .to_string()
}

/// Runs `cmd` with its stdout in a file, killing it after `limit`.
fn bounded_output(mut cmd: Command, limit: Duration, out: &Path) -> Result<String> {
    let file = std::fs::File::create(out)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(out)?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}):\n{text}");
    }
    Ok(text)
}

fn json_output(cmd: Command, limit: Duration) -> Result<Value> {
    let tmp = state_dir().join("bench").join("example.out");
    let text = bounded_output(cmd, limit, &tmp)?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("no JSON line in the output")?;
    Ok(serde_json::from_str(line)?)
}

fn run_hey(
    hey: &Path,
    url: &str,
    key: &str,
    body: &str,
    concurrency: u32,
    seconds: u64,
    dir: &Path,
) -> Result<HeyResult> {
    let mut cmd = Command::new(hey);
    cmd.args(["-z", &format!("{seconds}s")])
        .args(["-c", &concurrency.to_string()])
        .args(["-t", "10", "-m", "POST", "-T", "application/json"])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["-d", body])
        .arg(url);
    let text = bounded_output(cmd, Duration::from_secs(seconds + 30), &dir.join("hey.out"))?;
    parse_hey(&text).with_context(|| format!("unexpected hey output:\n{text}"))
}

fn parse_hey(text: &str) -> Result<HeyResult> {
    let mut r = HeyResult::default();
    let mut section = "";
    let secs = |s: &str| -> Result<f64> {
        Ok(s.trim().trim_end_matches("secs").trim().parse::<f64>()? * 1000.0)
    };
    for line in text.lines() {
        let t = line.trim();
        if t.ends_with(':') && !line.starts_with(' ') {
            section = t;
            continue;
        }
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse()?;
        } else if let Some(v) = t.strip_prefix("50% in") {
            r.p50_ms = secs(v)?;
        } else if let Some(v) = t.strip_prefix("99% in") {
            r.p99_ms = secs(v)?;
        } else if section == "Status code distribution:" && t.starts_with('[') {
            let (code, rest) = t[1..].split_once(']').context("status line")?;
            let n: u64 = rest
                .split_whitespace()
                .next()
                .context("status count")?
                .parse()?;
            if code == "200" {
                r.ok += n;
            } else {
                r.failed += n;
                r.failures.push(format!("{n} × HTTP {code}"));
            }
        } else if section == "Error distribution:" && t.starts_with('[') {
            let (n, msg) = t[1..].split_once(']').context("error line")?;
            let n: u64 = n.parse()?;
            r.failed += n;
            r.failures.push(format!("{n} × {}", msg.trim()));
        }
    }
    if r.ok == 0 && r.failed == 0 {
        bail!("no responses");
    }
    Ok(r)
}

/// A run is only a measurement if every request succeeded.
fn checked(r: HeyResult, gateway: &str, c: u32) -> Result<HeyResult> {
    if r.failed > 0 || r.ok == 0 {
        bail!(
            "gateway {gateway} at -c {c}: {} ok, {} failed ({}); the numbers would not measure Converse",
            r.ok,
            r.failed,
            r.failures.join(", ")
        );
    }
    Ok(r)
}

/// Time to first byte (ms, sorted) of ConverseStream through each URL, one
/// request per URL in turn so drift affects all alike. One warm-up request each.
fn ttfb(urls: &[String], key: &str, body: &str, n: u32) -> Result<Vec<Vec<f64>>> {
    let one = |url: &str| -> Result<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-X", "POST"])
            .args(["-w", "%{http_code} %{time_starttransfer}"])
            .args(["-H", "Content-Type: application/json"])
            .args(["-H", &format!("Authorization: Bearer {key}")])
            .args(["--data-binary", body])
            .arg(url)
            .output()
            .context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (code, t) = text.trim().split_once(' ').unwrap_or(("0", "0"));
        if code != "200" || !out.status.success() {
            bail!(
                "ConverseStream via {url}: HTTP {code} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(t.parse::<f64>()? * 1000.0)
    };
    for url in urls {
        one(url)?;
    }
    let mut samples = vec![Vec::new(); urls.len()];
    for _ in 0..n {
        for (url, s) in urls.iter().zip(&mut samples) {
            s.push(one(url)?);
        }
    }
    for s in &mut samples {
        s.sort_by(f64::total_cmp);
    }
    Ok(samples)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (VmRSS, VmHWM) in MiB.
fn rss(stack: &Stack, name: &str) -> Result<(f64, f64)> {
    let pid = stack
        .pid(name)
        .with_context(|| format!("{name} not running"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((kb("VmRSS:"), kb("VmHWM:")))
}

/// CPU seconds (user + system) the server processes have used so far; or,
/// from [`CpuSnapshot::per_request_since`], milliseconds per request of a run.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSnapshot {
    envoy_a: f64,
    envoy_b: f64,
    envoy_c: f64,
    envoy_d: f64,
    sidecar: f64,
    emulator: f64,
}

impl CpuSnapshot {
    /// CPU milliseconds per request each process used between `from` and now,
    /// over the requests of run `r`.
    fn per_request_since(&self, from: &CpuSnapshot, r: &HeyResult) -> CpuSnapshot {
        let n = (r.ok + r.failed).max(1) as f64;
        let ms = |a: f64, b: f64| (b - a) * 1000.0 / n;
        CpuSnapshot {
            envoy_a: ms(from.envoy_a, self.envoy_a),
            envoy_b: ms(from.envoy_b, self.envoy_b),
            envoy_c: ms(from.envoy_c, self.envoy_c),
            envoy_d: ms(from.envoy_d, self.envoy_d),
            sidecar: ms(from.sidecar, self.sidecar),
            emulator: ms(from.emulator, self.emulator),
        }
    }
}

fn cpu_snapshot(stack: &Stack) -> Result<CpuSnapshot> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = |name: &str| -> Result<f64> {
        let pid = stack
            .pid(name)
            .with_context(|| format!("{name} not running"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            f.get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok((ticks(14) + ticks(15)) / hz)
    };
    Ok(CpuSnapshot {
        envoy_a: secs("envoy-a")?,
        envoy_b: secs("envoy-b")?,
        envoy_c: secs("envoy-c")?,
        envoy_d: secs("envoy-d")?,
        sidecar: secs("sidecar")?,
        emulator: secs("emulator")?,
    })
}

fn machine(tools: &Tools) -> Vec<(String, String)> {
    let sh = |cmd: &str, args: &[&str]| -> String {
        Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let envoy = sh(tools.envoy().to_str().unwrap_or("envoy"), &["--version"]);
    let envoy = envoy.split("version: ").nth(1).unwrap_or(&envoy).to_owned();
    vec![
        ("date".into(), sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"])),
        ("nproc".into(), sh("nproc", &[])),
        ("cpu".into(), cpu),
        ("kernel".into(), sh("uname", &["-sr"])),
        ("envoy".into(), envoy),
        ("git".into(), {
            let rev = sh(
                "git",
                &[
                    "-C",
                    &repo_root().display().to_string(),
                    "rev-parse",
                    "--short",
                    "HEAD",
                ],
            );
            let dirty = !sh(
                "git",
                &[
                    "-C",
                    &repo_root().display().to_string(),
                    "status",
                    "--porcelain",
                ],
            )
            .is_empty();
            format!("{rev}{}", if dirty { " (with local changes)" } else { "" })
        }),
    ]
}

/// What one run measured. A: Tollgate; B: no Wasm filter; C: the reference
/// Wasm filter (headers and bodies read, nothing else); D: C plus a
/// shared-data lease admission per request.
struct Measured {
    args: BenchArgs,
    lat_a: HeyResult,
    /// At `--light-concurrency` (A, B, C): the cost of one request, not queueing.
    light_a: HeyResult,
    light_b: HeyResult,
    light_c: HeyResult,
    lat_b: HeyResult,
    lat_c: HeyResult,
    lat_d: HeyResult,
    max_a: HeyResult,
    max_b: HeyResult,
    max_c: HeyResult,
    max_d: HeyResult,
    ttfb_a: Vec<f64>,
    ttfb_b: Vec<f64>,
    ttfb_c: Vec<f64>,
    rss_a: (f64, f64),
    rss_b: (f64, f64),
    rss_c: (f64, f64),
    rss_sidecar: (f64, f64),
    rss_emulator: (f64, f64),
    /// CPU milliseconds per request during each gateway's max-throughput run.
    cpu_a: CpuSnapshot,
    cpu_b: CpuSnapshot,
    cpu_c: CpuSnapshot,
    cpu_d: CpuSnapshot,
    reserve_commit: Value,
    decode: Value,
    decode_v8: Value,
    request_path: Value,
    request_path_v8: Value,
    node_version: String,
    body_bytes: usize,
    /// With 2 workers per gateway, then 1.
    contention: [Contention; 2],
    wasm_bytes: u64,
    baseline_wasm_bytes: u64,
}

/// The overspend-under-contention row.
struct Contention {
    gateways: usize,
    /// Envoy workers per gateway: each worker keeps its own leases.
    workers: u32,
    requests: u64,
    admitted: u64,
    refused_402: u64,
    budget: rust_decimal::Decimal,
    spent: rust_decimal::Decimal,
    /// `budget ÷ the mean cost of an admitted request`, rounded down.
    possible: u64,
}

/// 4 gateways (A and three more like it, 2 workers each) against one tenant
/// whose budget fits about 50 of the bench's requests: 200 at once, 50 per
/// gateway. Reports spent ÷ budget (the hard cap: must be ≤ 1) and how many
/// were admitted of those the budget could pay for.
#[allow(clippy::too_many_arguments)]
fn contention(
    stack: &mut Stack,
    tools: &Tools,
    dir: &Path,
    hey: &Path,
    a: Ports,
    sidecar: &str,
    admin_token: &str,
    body: &str,
    workers: u32,
) -> Result<Contention> {
    use rust_decimal::Decimal;
    let tenant = format!("contention-{workers}w");
    let names: &[&'static str] = match workers {
        2 => &["envoy-x1", "envoy-x2", "envoy-x3"],
        _ => &["envoy-y0", "envoy-y1", "envoy-y2", "envoy-y3"],
    };
    // A (2 workers) takes part in the 2-worker run; the other run starts four.
    let mut urls = Vec::new();
    if workers == 2 {
        urls.push(format!(
            "http://127.0.0.1:{}/model/{MODEL}/converse",
            a.listener
        ));
    }
    for &name in names {
        let fresh = Ports::ephemeral()?;
        let p = Ports {
            listener: fresh.listener,
            envoy_admin: fresh.envoy_admin,
            ..a
        };
        let config = plain_http(&stack::emulator_envoy_config(tools, p, "us-east-1")?)?;
        start_envoy(stack, tools, dir, name, &config, p, workers)?;
        urls.push(format!(
            "http://127.0.0.1:{}/model/{MODEL}/converse",
            p.listener
        ));
    }
    // One request's hold: ~300 input tokens (estimate) × $0.25 + 128 × $1.25 per 1M.
    let budget = Decimal::new(50 * (300 * 25 + 128 * 125), 8);
    let auth = format!("Bearer {admin_token}");
    let (code, text) = curl(
        "PUT",
        &format!("{sidecar}/v1/tenants/{tenant}"),
        Some(&auth),
        Some(&format!(
            r#"{{"budget_usd": "{budget}", "reset_cycle": "none", "active": true}}"#
        )),
    )?;
    if code != 200 {
        bail!("creating tenant {tenant}: HTTP {code}: {text}");
    }
    let (code, text) = curl(
        "POST",
        &format!("{sidecar}/v1/tenants/{tenant}/keys"),
        Some(&auth),
        Some(r#"{"application_id": null}"#),
    )?;
    if code != 201 {
        bail!("issuing a key for {tenant}: HTTP {code}: {text}");
    }
    let key: Value = serde_json::from_str(&text)?;
    let key = key["key"]
        .as_str()
        .context("key response has no key")?
        .to_owned();
    let runs: Vec<_> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let mut cmd = Command::new(hey);
            cmd.args(["-n", "50", "-c", "50", "-t", "10", "-m", "POST"])
                .args(["-T", "application/json"])
                .args(["-H", &format!("Authorization: Bearer {key}")])
                .args(["-d", body])
                .arg(url);
            let out = dir.join(format!("hey-contention-{workers}w-{i}.out"));
            std::thread::spawn(move || bounded_output(cmd, Duration::from_secs(60), &out))
        })
        .collect();
    let (mut admitted, mut refused_402) = (0, 0);
    for run in runs {
        let text = run
            .join()
            .map_err(|_| anyhow::anyhow!("hey thread panicked"))??;
        let r = parse_hey(&text)?;
        admitted += r.ok;
        refused_402 += r
            .failures
            .iter()
            .filter(|f| f.ends_with("HTTP 402"))
            .filter_map(|f| f.split(' ').next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    // Commits travel in the background; idle leases come back within ~2 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spent = loop {
        let (code, text) = curl(
            "GET",
            &format!("{sidecar}/v1/tenants/{tenant}"),
            Some(&auth),
            None,
        )?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("HTTP {code}: {text}"))?;
        let dec = |k: &str| -> Decimal {
            v["balance"][k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_default()
        };
        let settled =
            v["balance"]["requests"].as_u64() == Some(admitted) && dec("reserved_usd").is_zero();
        if settled || Instant::now() > deadline {
            break dec("spent_usd");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let possible = if admitted > 0 && !spent.is_zero() {
        let mean = spent / Decimal::from(admitted);
        (budget / mean).floor().try_into().unwrap_or(0)
    } else {
        0
    };
    for &name in names {
        stack.stop_one(name);
    }
    Ok(Contention {
        gateways: urls.len(),
        workers,
        requests: 200,
        admitted,
        refused_402,
        budget,
        spent,
        possible,
    })
}

fn report(m: &Measured, machine: &[(String, String)]) -> Result<String> {
    let a = &m.args;
    let f = |v: &Value, path: &str| v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0);
    let mut s = String::new();
    writeln!(s, "# Tollgate benchmark report\n")?;
    for (k, v) in machine {
        writeln!(s, "- {k}: {v}")?;
    }
    writeln!(
        s,
        "- setup: one Bedrock emulator, one sidecar (SQLite), four Envoys (`--concurrency 2` each) \
         on 127.0.0.1; A = Tollgate filter + sidecar + `aws_request_signing`, \
         B = the same Envoy config without the Tollgate filter, C = B plus the reference \
         Wasm filter, D = C plus a shared-data lease admission; plain HTTP listeners \
         (downstream TLS excluded to isolate the filter)"
    )?;
    writeln!(
        s,
        "- load: `hey -z {}s`, Converse POST of {} bytes with a bearer key, keep-alive; \
         every request answered 200\n",
        a.seconds, m.body_bytes
    )?;
    writeln!(
        s,
        "| metric | A: Envoy + Tollgate | B: Envoy, no filter | A − B (or A / B) |"
    )?;
    writeln!(s, "| --- | ---: | ---: | ---: |")?;
    let c = a.concurrency;
    let cm = a.max_concurrency;
    let ms = |x: f64| format!("{x:.2} ms");
    let added = |x: f64, y: f64| format!("{:+.2} ms", x - y);
    let added3 = |x: f64, y: f64| format!("{:+.3} ms", x - y);
    let rows = [
        (
            format!("Converse latency p50 (c={c})"),
            ms(m.lat_a.p50_ms),
            ms(m.lat_b.p50_ms),
            added(m.lat_a.p50_ms, m.lat_b.p50_ms),
        ),
        (
            format!("Converse latency p99 (c={c})"),
            ms(m.lat_a.p99_ms),
            ms(m.lat_b.p99_ms),
            added(m.lat_a.p99_ms, m.lat_b.p99_ms),
        ),
        (
            format!(
                "Converse latency p50 / p99 (c={}, below saturation)",
                a.light_concurrency
            ),
            format!("{:.2} / {:.2} ms", m.light_a.p50_ms, m.light_a.p99_ms),
            format!("{:.2} / {:.2} ms", m.light_b.p50_ms, m.light_b.p99_ms),
            format!(
                "{:+.2} / {:+.2} ms",
                m.light_a.p50_ms - m.light_b.p50_ms,
                m.light_a.p99_ms - m.light_b.p99_ms
            ),
        ),
        (
            format!("Converse throughput (c={c})"),
            format!("{:.0} req/s", m.lat_a.rps),
            format!("{:.0} req/s", m.lat_b.rps),
            format!("{:.2}×", m.lat_a.rps / m.lat_b.rps),
        ),
        (
            format!("**Max throughput** (c={cm})"),
            format!("{:.0} req/s", m.max_a.rps),
            format!("{:.0} req/s", m.max_b.rps),
            format!("**{:.2}×**", m.max_a.rps / m.max_b.rps),
        ),
        (
            format!("Converse latency p50 / p99 (c={cm})"),
            format!("{:.2} / {:.2} ms", m.max_a.p50_ms, m.max_a.p99_ms),
            format!("{:.2} / {:.2} ms", m.max_b.p50_ms, m.max_b.p99_ms),
            format!(
                "{:+.2} / {:+.2} ms",
                m.max_a.p50_ms - m.max_b.p50_ms,
                m.max_a.p99_ms - m.max_b.p99_ms
            ),
        ),
        (
            format!(
                "ConverseStream time to first byte p50 ({} sequential)",
                a.ttfb_requests
            ),
            ms(percentile(&m.ttfb_a, 0.5)),
            ms(percentile(&m.ttfb_b, 0.5)),
            added(percentile(&m.ttfb_a, 0.5), percentile(&m.ttfb_b, 0.5)),
        ),
        (
            "ConverseStream time to first byte p90".into(),
            ms(percentile(&m.ttfb_a, 0.9)),
            ms(percentile(&m.ttfb_b, 0.9)),
            added(percentile(&m.ttfb_a, 0.9), percentile(&m.ttfb_b, 0.9)),
        ),
        (
            format!("CPU per request, Envoy (c={cm})"),
            format!("{:.3} ms", m.cpu_a.envoy_a),
            format!("{:.3} ms", m.cpu_b.envoy_b),
            added3(m.cpu_a.envoy_a, m.cpu_b.envoy_b),
        ),
        (
            format!("CPU per request, sidecar (c={cm})"),
            format!("{:.3} ms", m.cpu_a.sidecar),
            "—".into(),
            format!("{:+.3} ms", m.cpu_a.sidecar),
        ),
        (
            format!("CPU per request, emulator (c={cm})"),
            format!("{:.3} ms", m.cpu_a.emulator),
            format!("{:.3} ms", m.cpu_b.emulator),
            added3(m.cpu_a.emulator, m.cpu_b.emulator),
        ),
        (
            "Envoy RSS after load (peak)".into(),
            format!("{:.1} MiB ({:.1})", m.rss_a.0, m.rss_a.1),
            format!("{:.1} MiB ({:.1})", m.rss_b.0, m.rss_b.1),
            format!("{:+.1} MiB", m.rss_a.0 - m.rss_b.0),
        ),
        (
            "Requests measured (latency + max runs)".into(),
            format!("{}", m.lat_a.ok + m.max_a.ok),
            format!("{}", m.lat_b.ok + m.max_b.ok),
            String::new(),
        ),
    ];
    for (k, x, y, z) in rows {
        writeln!(s, "| {k} | {x} | {y} | {z} |")?;
    }
    let rc = &m.reserve_commit;
    let d = &m.decode;
    writeln!(s, "\n| component | measurement | value |")?;
    writeln!(s, "| --- | --- | ---: |")?;
    writeln!(
        s,
        "| sidecar | **reserve+commit pairs/s** ({} tasks, {} s, SQLite) | **{:.0}/s** |",
        a.sidecar_concurrency,
        a.seconds,
        f(rc, "/ops_per_s")
    )?;
    writeln!(
        s,
        "| sidecar | reserve+commit pair latency p50 / p99 | {:.2} / {:.2} ms |",
        f(rc, "/pair_p50_ms"),
        f(rc, "/pair_p99_ms")
    )?;
    writeln!(
        s,
        "| sidecar | RSS after load (peak) | {:.1} MiB ({:.1}) |",
        m.rss_sidecar.0, m.rss_sidecar.1
    )?;
    writeln!(
        s,
        "| filter | **event-stream decode**, all ({:.0} MiB, 16 KiB chunks, native) | **{:.0} MB/s** |",
        f(d, "/total/bytes") / 1048576.0,
        f(d, "/total/mb_per_s")
    )?;
    writeln!(
        s,
        "| filter | decode, ConverseStream | {:.0} MB/s ({:.2} M frames/s) |",
        f(d, "/converse_stream/mb_per_s"),
        f(d, "/converse_stream/frames_per_s") / 1e6
    )?;
    writeln!(
        s,
        "| filter | decode, InvokeModelWithResponseStream (base64 chunks) | {:.0} MB/s ({:.2} M frames/s) |",
        f(d, "/invoke_with_response_stream/mb_per_s"),
        f(d, "/invoke_with_response_stream/frames_per_s") / 1e6
    )?;
    writeln!(
        s,
        "| emulator | RSS after load (peak), for reference | {:.1} MiB ({:.1}) |",
        m.rss_emulator.0, m.rss_emulator.1
    )?;
    writeln!(
        s,
        "| filter | decode under V8 (node {}, the same code built for wasm32-wasip1) | {:.0} MB/s (ConverseStream {:.0}, Invoke {:.0}) |",
        m.node_version,
        f(&m.decode_v8, "/total/mb_per_s"),
        f(&m.decode_v8, "/converse_stream/mb_per_s"),
        f(&m.decode_v8, "/invoke_with_response_stream/mb_per_s"),
    )?;
    for ct in &m.contention {
        let ratio = if ct.budget.is_zero() {
            0.0
        } else {
            use rust_decimal::prelude::ToPrimitive;
            (ct.spent / ct.budget).to_f64().unwrap_or(0.0)
        };
        writeln!(
            s,
            "| gateways | **overspend under contention**: {} gateways × {} worker(s), 1 tenant, {} concurrent requests, budget ${} | **spent/budget {:.3}**, admitted {}/{} possible ({} refused 402) |",
            ct.gateways, ct.workers, ct.requests, ct.budget, ratio, ct.admitted, ct.possible, ct.refused_402
        )?;
    }
    writeln!(
        s,
        "| filter | `tollgate_filter.wasm` size | {:.0} KB |",
        m.wasm_bytes as f64 / 1000.0
    )?;
    writeln!(
        s,
        "| reference | `wasm_baseline.wasm` size (gateways C and D) | {:.0} KB |",
        m.baseline_wasm_bytes as f64 / 1000.0
    )?;
    breakdown(&mut s, m)?;
    if f(rc, "/errors") > 0.0 || f(rc, "/denied") > 0.0 {
        writeln!(
            s,
            "\nNote: the reserve+commit load saw {} errors and {} denials (first error: {}).",
            f(rc, "/errors"),
            f(rc, "/denied"),
            rc["first_error"]
        )?;
    }
    writeln!(
        s,
        "\nLoad generator, servers and sidecar share the same {} CPU(s); see docs/benchmarks.md.",
        machine
            .iter()
            .find(|(k, _)| k == "nproc")
            .map_or("?", |(_, v)| v.as_str())
    )?;
    Ok(s)
}

/// Where A's cost goes: the four gateways side by side, and the filter's own
/// work per request natively and under V8.
fn breakdown(s: &mut String, m: &Measured) -> Result<()> {
    let a = &m.args;
    let f = |v: &Value, path: &str| v.pointer(path).and_then(Value::as_f64).unwrap_or(0.0);
    writeln!(
        s,
        "\n### Where the cost goes\n\n\
         B: no Wasm filter. C: the reference Wasm filter (`filter/examples/wasm_baseline.rs`: \
         reads two headers, holds them until the body is in, copies the request body and every \
         response chunk into the VM; nothing else). D: C plus one shared-data lease admission \
         per request (get, parse, take the hold, compare-and-swap). A: Tollgate.\n"
    )?;
    writeln!(
        s,
        "| metric | B: no Wasm | C: reference Wasm | D: C + shared lease | A: Tollgate |"
    )?;
    writeln!(s, "| --- | ---: | ---: | ---: | ---: |")?;
    let rows: [(String, [String; 4]); 6] = [
        (
            format!("max throughput (c={})", a.max_concurrency),
            [&m.max_b, &m.max_c, &m.max_d, &m.max_a].map(|r| format!("{:.0} req/s", r.rps)),
        ),
        (
            format!("latency p50 / p99 (c={})", a.light_concurrency),
            [
                format!("{:.2} / {:.2} ms", m.light_b.p50_ms, m.light_b.p99_ms),
                format!("{:.2} / {:.2} ms", m.light_c.p50_ms, m.light_c.p99_ms),
                "—".into(),
                format!("{:.2} / {:.2} ms", m.light_a.p50_ms, m.light_a.p99_ms),
            ],
        ),
        (
            format!("latency p50 / p99 (c={})", a.concurrency),
            [&m.lat_b, &m.lat_c, &m.lat_d, &m.lat_a]
                .map(|r| format!("{:.2} / {:.2} ms", r.p50_ms, r.p99_ms)),
        ),
        (
            format!("Envoy CPU per request (c={})", a.max_concurrency),
            [
                m.cpu_b.envoy_b,
                m.cpu_c.envoy_c,
                m.cpu_d.envoy_d,
                m.cpu_a.envoy_a,
            ]
            .map(|v| format!("{v:.3} ms")),
        ),
        (
            "… added to B".into(),
            [
                0.0,
                m.cpu_c.envoy_c - m.cpu_b.envoy_b,
                m.cpu_d.envoy_d - m.cpu_b.envoy_b,
                m.cpu_a.envoy_a - m.cpu_b.envoy_b,
            ]
            .map(|v| format!("{v:+.3} ms")),
        ),
        (
            "ConverseStream TTFB p50".into(),
            [
                format!("{:.2} ms", percentile(&m.ttfb_b, 0.5)),
                format!("{:.2} ms", percentile(&m.ttfb_c, 0.5)),
                "—".into(),
                format!("{:.2} ms", percentile(&m.ttfb_a, 0.5)),
            ],
        ),
    ];
    for (k, v) in rows {
        writeln!(s, "| {k} | {} |", v.join(" | "))?;
    }
    writeln!(
        s,
        "| Envoy RSS after load | {:.1} MiB | {:.1} MiB | — | {:.1} MiB |",
        m.rss_b.0, m.rss_c.0, m.rss_a.0
    )?;
    writeln!(
        s,
        "\nTollgate's own Rust per request (`filter/examples/request_path.rs`, {} requests, \
         a lease-admitted Converse): **{:.1} µs native, {:.1} µs under V8** (node {}). \
         Envoy CPU that is A's own (A − C): {:+.3} ms; the price of a body-reading Wasm \
         filter (C − B): {:+.3} ms; a shared-data lease admission (D − C): {:+.3} ms.",
        m.request_path["iterations"],
        f(&m.request_path, "/ns_per_request") / 1000.0,
        f(&m.request_path_v8, "/ns_per_request") / 1000.0,
        m.node_version,
        m.cpu_a.envoy_a - m.cpu_c.envoy_c,
        m.cpu_c.envoy_c - m.cpu_b.envoy_b,
        m.cpu_d.envoy_d - m.cpu_c.envoy_c,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> String {
        let template =
            std::fs::read_to_string(repo_root().join("envoy/emulator.yaml")).expect("template");
        let vars: Vec<(&str, String)> = [
            "ENVOY_ADMIN_PORT",
            "LISTENER_PORT",
            "WASM_PATH",
            "AWS_REGION",
            "EMULATOR_ACCESS_KEY_ID",
            "EMULATOR_SECRET_ACCESS_KEY",
            "BEDROCK_PORT",
            "SIDECAR_PORT",
            "TLS_CERT",
            "TLS_KEY",
        ]
        .into_iter()
        .map(|k| (k, "1".to_owned()))
        .collect();
        stack::render(&template, &vars).expect("render")
    }

    #[test]
    fn configs_lose_tls_and_the_filter() {
        let plain = plain_http(&rendered()).unwrap();
        assert!(!plain.contains("transport_socket"));
        assert!(!plain.contains("DownstreamTlsContext"));
        assert!(plain.contains(
            "    - filters:\n      - name: envoy.filters.network.http_connection_manager"
        ));
        assert!(plain.contains("- name: tollgate"));
        let bare = without_tollgate(&plain).unwrap();
        assert!(!bare.contains("envoy.extensions.filters.http.wasm"));
        assert!(!bare.contains("tollgate.wasm") && !bare.contains("sidecar_cluster"));
        assert!(bare.contains(
            "          http_filters:\n          - name: envoy.filters.http.aws_request_signing"
        ));
        assert!(bare.contains("envoy.filters.http.router"));
    }

    #[test]
    fn the_reference_filter_takes_tollgates_place() {
        let tools = Tools {
            wasm: setup::WasmToolchain::Rustup,
            venv: "/nonexistent".into(),
            tls: "/nonexistent".into(),
            dynalite: "/nonexistent".into(),
        };
        let template = std::fs::read_to_string(repo_root().join("envoy/emulator.yaml")).unwrap();
        let vars = [
            ("ENVOY_ADMIN_PORT", "1".to_owned()),
            ("LISTENER_PORT", "1".into()),
            ("WASM_PATH", tools.wasm_path().display().to_string()),
            ("AWS_REGION", "us-east-1".into()),
            ("EMULATOR_ACCESS_KEY_ID", "1".into()),
            ("EMULATOR_SECRET_ACCESS_KEY", "1".into()),
            ("BEDROCK_PORT", "1".into()),
            ("SIDECAR_PORT", "1".into()),
            ("TLS_CERT", "1".into()),
            ("TLS_KEY", "1".into()),
        ];
        let config = plain_http(&stack::render(&template, &vars).unwrap()).unwrap();
        let reference = Path::new("/x/wasm_baseline.wasm");
        let c = reference_filter(&config, &tools, reference, false).unwrap();
        assert!(c.contains(r#"filename: "/x/wasm_baseline.wasm""#), "{c}");
        assert!(c.contains(r#"{"shared_lease": false}"#));
        assert!(!c.contains("sidecar_cluster") && !c.contains("tollgate_filter.wasm"));
        // Same place in the chain, same Wasm settings.
        assert!(c.contains("allow_on_headers_stop_iteration: true"));
        assert!(c.contains(
            "          - name: tollgate\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
        ));
        let d = reference_filter(&config, &tools, reference, true).unwrap();
        assert!(d.contains(r#"{"shared_lease": true}"#));
        assert!(reference_filter("static_resources: {}", &tools, reference, true).is_err());
    }

    #[test]
    fn port_sets_do_not_collide() {
        let sets = port_sets(4).unwrap();
        let mut own: Vec<u16> = sets
            .iter()
            .flat_map(|p| [p.listener, p.envoy_admin])
            .collect();
        own.sort_unstable();
        own.dedup();
        assert_eq!(own.len(), 8);
        assert!(sets
            .iter()
            .all(|p| p.sidecar == sets[0].sidecar && p.emulator == sets[0].emulator));
    }

    #[test]
    fn parses_hey() {
        let text = "\nSummary:\n  Total:\t10.0021 secs\n  Slowest:\t0.0512 secs\n  Requests/sec:\t1995.2310\n\n\
            Latency distribution:\n  10% in 0.0025 secs\n  50% in 0.0036 secs\n  99% in 0.0112 secs\n\n\
            Status code distribution:\n  [200]\t19950 responses\n  [503]\t2 responses\n\n\
            Error distribution:\n  [3]\tPost \"http://x\": EOF\n";
        let r = parse_hey(text).unwrap();
        assert_eq!(r.ok, 19950);
        assert_eq!(r.failed, 5);
        assert!((r.rps - 1995.231).abs() < 1e-9);
        assert!((r.p50_ms - 3.6).abs() < 1e-9);
        assert!((r.p99_ms - 11.2).abs() < 1e-9);
        assert!(parse_hey("nothing").is_err());
    }
}
