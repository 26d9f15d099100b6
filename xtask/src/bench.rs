//! `cargo xtask bench`: the benchmark report of DESIGN §6.
//!
//! One run, one machine, one emulator upstream, two gateways side by side:
//!
//! - **A**: Envoy with the Tollgate filter, the sidecar and `aws_request_signing`;
//! - **B**: the same Envoy configuration without the Tollgate filter (signing kept).
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

    let (pa, pb) = two_port_sets()?;
    let mut stack = Stack::new(dir.clone())?;
    println!(
        "bench: starting emulator, sidecar and two Envoys (logs in {})",
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

    let base = plain_http(&stack::emulator_envoy_config(tools, pa, "us-east-1")?)?;
    start_envoy(&mut stack, tools, &dir, "envoy-a", &base, pa)?;
    let without = without_tollgate(&plain_http(&stack::emulator_envoy_config(
        tools,
        pb,
        "us-east-1",
    )?)?)?;
    start_envoy(&mut stack, tools, &dir, "envoy-b", &without, pb)?;

    let sidecar_url = format!("http://127.0.0.1:{}", pa.sidecar);
    let key = provision(&sidecar_url, &admin_token)?;

    let url = |p: Ports, op: &str| format!("http://127.0.0.1:{}/model/{MODEL}/{op}", p.listener);
    let body = converse_body();
    for (name, p) in [("A", pa), ("B", pb)] {
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
    println!("bench: warm-up (2 s each)");
    load(pa, args.concurrency, 2)?;
    load(pb, args.concurrency, 2)?;
    let c = args.concurrency;
    let cmax = args.max_concurrency;
    let s = args.seconds;
    println!("bench: latency, Converse, hey -z {s}s -c {c}: A then B");
    let lat_a = checked(load(pa, c, s)?, "A", c)?;
    let lat_b = checked(load(pb, c, s)?, "B", c)?;
    println!("bench: throughput, Converse, hey -z {s}s -c {cmax}: A then B");
    let before = cpu_snapshot(&stack)?;
    let max_a = checked(load(pa, cmax, s)?, "A", cmax)?;
    let mid = cpu_snapshot(&stack)?;
    let max_b = checked(load(pb, cmax, s)?, "B", cmax)?;
    let after = cpu_snapshot(&stack)?;
    let per_request = |from: &CpuSnapshot, to: &CpuSnapshot, r: &HeyResult| -> CpuSnapshot {
        let n = (r.ok + r.failed).max(1) as f64;
        let ms = |a: f64, b: f64| (b - a) * 1000.0 / n;
        CpuSnapshot {
            envoy_a: ms(from.envoy_a, to.envoy_a),
            envoy_b: ms(from.envoy_b, to.envoy_b),
            sidecar: ms(from.sidecar, to.sidecar),
            emulator: ms(from.emulator, to.emulator),
        }
    };
    let cpu_a = per_request(&before, &mid, &max_a);
    let cpu_b = per_request(&mid, &after, &max_b);

    println!(
        "bench: ConverseStream time to first byte, {} sequential requests each (interleaved)",
        args.ttfb_requests
    );
    let (ttfb_a, ttfb_b) = ttfb(
        &url(pa, "converse-stream"),
        &url(pb, "converse-stream"),
        &key,
        &body,
        args.ttfb_requests,
    )?;

    let rss_a = rss(&stack, "envoy-a")?;
    let rss_b = rss(&stack, "envoy-b")?;
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

    println!("bench: overspend under contention: 4 gateways, 1 tenant, 200 concurrent requests");
    let contention = contention(
        &mut stack,
        tools,
        &dir,
        &hey,
        pa,
        &sidecar_url,
        &admin_token,
        &body,
    )?;
    stack.stop();

    let m = Measured {
        args: args.clone(),
        lat_a,
        lat_b,
        max_a,
        max_b,
        ttfb_a,
        ttfb_b,
        rss_a,
        rss_b,
        rss_sidecar,
        rss_emulator,
        cpu_a,
        cpu_b,
        reserve_commit,
        decode,
        body_bytes: body.len(),
        contention,
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
fn two_port_sets() -> Result<(Ports, Ports)> {
    let a = Ports::ephemeral()?;
    let used = [a.listener, a.envoy_admin, a.sidecar, a.emulator];
    for _ in 0..20 {
        let b = Ports::ephemeral()?;
        if !used.contains(&b.listener) && !used.contains(&b.envoy_admin) {
            return Ok((
                a,
                Ports {
                    listener: b.listener,
                    envoy_admin: b.envoy_admin,
                    ..a
                },
            ));
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

fn start_envoy(
    stack: &mut Stack,
    tools: &Tools,
    dir: &Path,
    name: &'static str,
    config: &str,
    ports: Ports,
) -> Result<()> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, config)?;
    let launch = plan::envoy(&tools.envoy(), &path, ports, 2, &stack.filter_token().token);
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

/// Time to first byte (ms, p50 and p90) of ConverseStream through A and B,
/// interleaved so drift affects both alike. One warm-up request each.
fn ttfb(url_a: &str, url_b: &str, key: &str, body: &str, n: u32) -> Result<(Vec<f64>, Vec<f64>)> {
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
    one(url_a)?;
    one(url_b)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..n {
        a.push(one(url_a)?);
        b.push(one(url_b)?);
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    Ok((a, b))
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

/// CPU seconds (user + system) each server process has used so far.
#[derive(Debug, Clone, Copy)]
struct CpuSnapshot {
    envoy_a: f64,
    envoy_b: f64,
    sidecar: f64,
    emulator: f64,
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

struct Measured {
    args: BenchArgs,
    lat_a: HeyResult,
    lat_b: HeyResult,
    max_a: HeyResult,
    max_b: HeyResult,
    ttfb_a: Vec<f64>,
    ttfb_b: Vec<f64>,
    rss_a: (f64, f64),
    rss_b: (f64, f64),
    rss_sidecar: (f64, f64),
    rss_emulator: (f64, f64),
    /// CPU milliseconds per request during A's and B's max-throughput runs.
    cpu_a: CpuSnapshot,
    cpu_b: CpuSnapshot,
    reserve_commit: Value,
    decode: Value,
    body_bytes: usize,
    contention: Contention,
    wasm_bytes: u64,
}

/// The overspend-under-contention row.
struct Contention {
    gateways: usize,
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
) -> Result<Contention> {
    use rust_decimal::Decimal;
    const TENANT_C: &str = "contention";
    let names = ["envoy-c1", "envoy-c2", "envoy-c3"];
    let mut urls = vec![format!(
        "http://127.0.0.1:{}/model/{MODEL}/converse",
        a.listener
    )];
    for name in names {
        let fresh = Ports::ephemeral()?;
        let p = Ports {
            listener: fresh.listener,
            envoy_admin: fresh.envoy_admin,
            ..a
        };
        let config = plain_http(&stack::emulator_envoy_config(tools, p, "us-east-1")?)?;
        start_envoy(stack, tools, dir, name, &config, p)?;
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
        &format!("{sidecar}/v1/tenants/{TENANT_C}"),
        Some(&auth),
        Some(&format!(
            r#"{{"budget_usd": "{budget}", "reset_cycle": "none", "active": true}}"#
        )),
    )?;
    if code != 200 {
        bail!("creating tenant {TENANT_C}: HTTP {code}: {text}");
    }
    let (code, text) = curl(
        "POST",
        &format!("{sidecar}/v1/tenants/{TENANT_C}/keys"),
        Some(&auth),
        Some(r#"{"application_id": null}"#),
    )?;
    if code != 201 {
        bail!("issuing a key for {TENANT_C}: HTTP {code}: {text}");
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
            let out = dir.join(format!("hey-contention-{i}.out"));
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
            &format!("{sidecar}/v1/tenants/{TENANT_C}"),
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
    Ok(Contention {
        gateways: urls.len(),
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
        "- setup: one Bedrock emulator, one sidecar (SQLite), two Envoys (`--concurrency 2` each) \
         on 127.0.0.1; A = Tollgate filter + sidecar + `aws_request_signing`, \
         B = the same Envoy config without the Tollgate filter; plain HTTP listeners \
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
    let ct = &m.contention;
    let ratio = if ct.budget.is_zero() {
        0.0
    } else {
        use rust_decimal::prelude::ToPrimitive;
        (ct.spent / ct.budget).to_f64().unwrap_or(0.0)
    };
    writeln!(
        s,
        "| gateways | **overspend under contention**: {} gateways, 1 tenant, {} concurrent requests, budget ${} | **spent/budget {:.3}**, admitted {}/{} possible ({} refused 402) |",
        ct.gateways, ct.requests, ct.budget, ratio, ct.admitted, ct.possible, ct.refused_402
    )?;
    writeln!(
        s,
        "| filter | `tollgate_filter.wasm` size | {:.0} KB |",
        m.wasm_bytes as f64 / 1000.0
    )?;
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
