//! `cargo xtask …`: everything a developer or CI runs, each command installing
//! what it needs first.

// libc process control (kill, prctl, geteuid, sysconf), each call with its
// SAFETY note; the shipped crates keep the workspace's `unsafe_code = "deny"`.
#![allow(unsafe_code)]

mod bench;
mod fuzz;
mod images;
mod plan;
mod setup;
mod stack;
mod wasmtest;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tollgate developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: wasm toolchain, Envoy, Python test clients.
    Setup,
    /// Build the Wasm filter and the host binaries.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the stack in the foreground until interrupted.
    Up(UpArgs),
    /// The budget-exhaustion demo on the emulator, with a report.
    Demo,
    /// `tollgate-sidecar doctor` against the stack `cargo xtask up` runs (its
    /// sidecar, Envoy admin and, on the emulator, its STS stand-in). Needs
    /// `TOLLGATE_ADMIN_TOKEN` for the catalog checks.
    Doctor,
    /// Everything CI runs: the gates (fmt, clippy, SQLite-only build,
    /// cargo-deny, promtool on deploy/prometheus), then every test (the
    /// browser tests install headless Chromium from Debian when missing).
    Test,
    /// Build the container images (deploy/docker/Dockerfile) with docker or
    /// podman, whichever is present; checks the filter's OCI image.
    Image(images::ImageArgs),
    /// The container images tested for real: builds them from the host's
    /// release build, starts compose.yaml, drives boto3 through it, checks the
    /// ledger, stops it (tests/images; not part of `test`).
    TestImages {
        /// docker or podman (default: docker if its daemon answers, else podman).
        #[arg(long, value_enum)]
        engine: Option<images::EngineKind>,
    },
    /// Supply-chain checks with cargo-deny: licenses, bans, sources and
    /// advisories (the advisory database is fetched from github.com).
    Deny,
    /// The benchmark report (DESIGN §6): gateway with and without Tollgate,
    /// side by side on the emulator; writes .tollgate/bench/report.md.
    Bench(bench::BenchArgs),
    /// The stack's launches (argv, environment, readiness) and rendered Envoy
    /// config for given ports, as JSON: what the e2e harness starts.
    #[command(hide = true)]
    Plan(plan::PlanArgs),
    /// Fuzz the event-stream decoder and body readers (needs nightly).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

#[derive(clap::Args, Clone)]
pub struct UpArgs {
    /// Bedrock Runtime endpoint (http:// or https://). Without it the emulator runs.
    #[arg(long)]
    bedrock_endpoint: Option<String>,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    #[arg(long, value_enum, default_value_t = Store::Embedded)]
    store: Store,
    /// Seed file (tenants, keys, prices) loaded by the sidecar at start.
    #[arg(long)]
    config: Option<PathBuf>,
    /// CA bundle that verifies Bedrock's certificate (with an https://
    /// --bedrock-endpoint). Default: the system bundle, wherever this
    /// distribution keeps it.
    #[arg(long, env = "TOLLGATE_TRUSTED_CA")]
    trusted_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Store {
    Embedded,
    Dynamodb,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the repo root")
        .to_path_buf()
}

pub fn state_dir() -> PathBuf {
    repo_root().join(".tollgate")
}

/// Runs a command in the repo root, failing with the command line on error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("command failed ({status}): {line}");
    }
    Ok(())
}

fn main() -> Result<()> {
    // `cargo run` gives xtask its package's CARGO_MANIFEST_*/CARGO_PKG_*, and
    // ring's build script reruns when they change: each cargo command from here
    // would rebuild ring and all above it (rustls, reqwest, the sidecar) again
    // after one run by hand. Nothing here reads them at run time.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*k)
        {
            std::env::remove_var(&key);
        }
    }
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup().map(|_| ()),
        Cmd::Build { release } => {
            let tools = setup::setup()?;
            setup::build_all(&tools, release)
        }
        Cmd::Up(args) => {
            let tools = setup::setup()?;
            setup::build_all(&tools, false)?;
            stack::up(&tools, &args)
        }
        Cmd::Demo => {
            let tools = setup::setup()?;
            setup::build_all(&tools, false)?;
            stack::demo(&tools)
        }
        Cmd::Doctor => {
            let tools = setup::setup()?;
            setup::build_all(&tools, false)?;
            stack::doctor(&tools)
        }
        Cmd::Test => {
            let tools = setup::setup()?;
            test(&tools)
        }
        Cmd::Image(args) => {
            let tools = setup::setup()?;
            images::image(&tools, &args)
        }
        Cmd::TestImages { engine } => {
            let tools = setup::setup()?;
            images::test_images(&tools, engine)
        }
        Cmd::Deny => {
            let tools = setup::setup()?;
            deny(&tools)
        }
        Cmd::Bench(args) => {
            let tools = setup::setup()?;
            bench::bench(&tools, &args)
        }
        Cmd::Fuzz { seconds } => fuzz::fuzz(seconds),
        Cmd::Plan(args) => plan::plan(&args),
    }
}

/// Runs one gate of `cargo xtask test`: it fails fast, saying what to do.
fn gate(what: &str, fix: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {what}");
    let start = std::time::Instant::now();
    run(cmd).with_context(|| format!("gate failed: {what}; {fix}"))?;
    println!("    ok ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

/// Checks that fail fast, before any test runs.
fn gates(tools: &setup::Tools, cargo: &str) -> Result<()> {
    gate(
        "formatting (cargo fmt --all --check)",
        "run `cargo fmt --all`",
        Command::new(cargo).args(["fmt", "--all", "--check"]),
    )?;
    gate(
        "lints (cargo clippy --workspace --all-targets -- -D warnings)",
        "fix the findings above",
        Command::new(cargo).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The SQLite-only sidecar is its own cfg: lint it too, so neither build
    // rots while the other is the one developers run.
    gate(
        "SQLite-only sidecar (cargo clippy -p tollgate-sidecar --no-default-features)",
        "fix the findings above (code behind `feature = \"dynamodb\"`?)",
        Command::new(cargo).args([
            "clippy",
            "-p",
            "tollgate-sidecar",
            "--no-default-features",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // Advisories need the RustSec database from github.com: `cargo xtask deny`.
    gate(
        "supply chain (cargo deny check licenses bans sources)",
        "see deny.toml",
        Command::new(tools.cargo_deny()).args([
            "check",
            "--hide-inclusion-graph",
            "licenses",
            "bans",
            "sources",
        ]),
    )
}

/// Every cargo-deny check; advisories last, as the only one that needs the
/// network (the RustSec database, cloned from github.com).
fn deny(tools: &setup::Tools) -> Result<()> {
    let deny = |checks: &[&str]| {
        let mut cmd = Command::new(tools.cargo_deny());
        cmd.args(["check", "--hide-inclusion-graph"]).args(checks);
        cmd
    };
    run(&mut deny(&["licenses", "bans", "sources"]))?;
    run(&mut deny(&["advisories"])).context(
        "advisories need the RustSec database: is github.com/RustSec/advisory-db reachable?",
    )
}

/// The Prometheus files in `deploy/prometheus`: the alerting rules checked and
/// unit-tested, the example configuration checked (rules included) with its
/// metrics token file pointed at a stand-in, since promtool opens it.
fn prometheus_gates() -> Result<()> {
    const TOKEN_FILE: &str = "/etc/prometheus/tollgate-metrics-token";
    let promtool = setup::promtool()?;
    gate(
        "alerting rules (promtool check rules deploy/prometheus/alerts.yaml)",
        "fix the rules above",
        Command::new(&promtool).args(["check", "rules", "deploy/prometheus/alerts.yaml"]),
    )?;
    gate(
        "alerting rules' unit tests (promtool test rules deploy/prometheus/alerts_test.yaml)",
        "an alert fired or stayed silent against its test series: see above",
        Command::new(&promtool).args(["test", "rules", "deploy/prometheus/alerts_test.yaml"]),
    )?;
    let src = repo_root().join("deploy/prometheus");
    let dir = state_dir().join("promtool");
    std::fs::create_dir_all(&dir)?;
    let config = std::fs::read_to_string(src.join("prometheus.yaml"))
        .context("reading deploy/prometheus/prometheus.yaml")?;
    if !config.contains(TOKEN_FILE) {
        bail!("deploy/prometheus/prometheus.yaml no longer reads {TOKEN_FILE}: update this check");
    }
    let token = dir.join("tollgate-metrics-token");
    std::fs::write(&token, "stand-in-metrics-token\n")?;
    std::fs::write(
        dir.join("prometheus.yaml"),
        config.replace(TOKEN_FILE, &token.display().to_string()),
    )?;
    std::fs::copy(src.join("alerts.yaml"), dir.join("alerts.yaml"))?;
    gate(
        "example Prometheus config (promtool check config deploy/prometheus/prometheus.yaml)",
        "fix the configuration above",
        Command::new(&promtool)
            .args(["check", "config"])
            .arg(dir.join("prometheus.yaml")),
    )
}

fn test(tools: &setup::Tools) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    gates(tools, &cargo)?;
    prometheus_gates()?;
    println!("==> unit and integration tests (cargo test --workspace)");
    run(Command::new(&cargo).args(["test", "--workspace", "--quiet"]))?;
    println!("==> the filter's pure core and the wire crate on wasm32 (wasm-bindgen-test, node)");
    wasmtest::test(tools)?;
    setup::build_all(tools, false)?;
    // The container tests need podman (`cargo xtask test-images`); the
    // Kubernetes manifests need only the validator and Envoy, so CI checks them.
    println!("==> Kubernetes manifests (kubernetes-validate --strict; the OCI EnvoyFilter through Envoy)");
    let venv = images::images_venv()?;
    let mut k8s = Command::new(tools.python());
    k8s.args([
        "-m",
        "pytest",
        "tests/images/test_manifests.py",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
    ])
    .env("KUBERNETES_VALIDATE", venv.join("bin/kubernetes-validate"));
    for (k, v) in tools.test_env(false) {
        k8s.env(k, v);
    }
    run(&mut k8s)?;
    setup::chromium()?;
    println!("==> end-to-end tests (pytest tests/e2e: real Envoy + filter + sidecar + emulator)");
    let mut py = Command::new(tools.python());
    py.args([
        "-m",
        "pytest",
        "tests/e2e",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
    ]);
    for (k, v) in tools.test_env(false) {
        py.env(k, v);
    }
    run(&mut py)?;
    println!("==> all tests passed");
    Ok(())
}
