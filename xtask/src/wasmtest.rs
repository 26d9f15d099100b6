//! The filter's pure core (and the wire crate) tested on wasm32 under
//! wasm-bindgen-test, with node as the runner: the same unit tests as the native
//! run, compiled for the architecture the filter ships on.
//!
//! Needs the `wasm32-unknown-unknown` target (rustup) and `wasm-bindgen-test-runner`
//! of exactly the wasm-bindgen version in Cargo.lock (installed with
//! `cargo install wasm-bindgen-cli`, a few minutes once per machine).

use crate::setup::{have, Tools, WasmToolchain};
use crate::{repo_root, run};
use anyhow::{bail, Context as _, Result};
use std::process::Command;

const TARGET: &str = "wasm32-unknown-unknown";

fn locked_wasm_bindgen_version() -> Result<String> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            if let Some(v) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(v.trim_end_matches('"').to_owned());
            }
        }
    }
    bail!("Cargo.lock has no wasm-bindgen entry (is wasm-bindgen-test a dev-dependency?)")
}

fn runner_version() -> Option<String> {
    let out = Command::new("wasm-bindgen-test-runner")
        .arg("--version")
        .output()
        .ok()?;
    // "wasm-bindgen-test-runner 0.2.130"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

fn ensure_runner() -> Result<()> {
    let want = locked_wasm_bindgen_version()?;
    if runner_version().as_deref() == Some(want.as_str()) {
        return Ok(());
    }
    println!(
        "setup: installing wasm-bindgen-cli {want} (wasm-bindgen-test-runner; a few minutes, once)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(["install", "--quiet", "wasm-bindgen-cli", "--version", &want]))
        .context("installing wasm-bindgen-cli")?;
    if runner_version().as_deref() != Some(want.as_str()) {
        bail!("wasm-bindgen-test-runner {want} is not on PATH after installing it (is ~/.cargo/bin on PATH?)");
    }
    Ok(())
}

fn ensure_node() -> Result<()> {
    if !have("node", &["--version"]) {
        bail!(
            "node is needed to run the wasm32 tests; install Node.js (apt-get install -y nodejs)"
        );
    }
    Ok(())
}

pub fn test(tools: &Tools) -> Result<()> {
    ensure_node()?;
    ensure_runner()?;
    let args = [
        // No --quiet: cargo would pass it on to wasm-bindgen-test-runner.
        "test",
        "--target",
        TARGET,
        "-p",
        "tollgate-filter",
        "-p",
        "tollgate-wire",
        "--lib",
        "--target-dir",
        "target/wasm-test",
    ];
    let runner = (
        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
        "wasm-bindgen-test-runner",
    );
    let rustup_ready =
        tools.wasm == WasmToolchain::Rustup && (have("rustup", &["target", "add", TARGET]));
    if rustup_ready {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo)
            .args(args)
            .env(runner.0, runner.1)
            .env_remove("RUSTFLAGS"))
    } else {
        let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new("/usr/bin/cargo")
            .args(args)
            .args(["-Zbuild-std=std,panic_abort"])
            .env(runner.0, runner.1)
            .env("PATH", path)
            .env("RUSTC", "/usr/bin/rustc")
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER", "wasm-ld-19")
            .env_remove("RUSTUP_TOOLCHAIN"))
    }
    .context("wasm32 unit tests (wasm-bindgen-test under node)")
}
