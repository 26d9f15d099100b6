//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` for a bounded time
//! each, when a nightly toolchain is present (libFuzzer needs nightly flags).
//! Findings land in `fuzz/artifacts/`; turn each into a regression unit test.

use crate::run;
use crate::setup::have;
use anyhow::Result;
use std::process::Command;

const TARGETS: &[&str] = &["eventstream_decoder", "body_readers"];

pub fn fuzz(seconds: u64) -> Result<()> {
    if !have("cargo", &["+nightly", "--version"]) {
        println!("fuzz: no nightly toolchain, skipping (install one with `rustup toolchain install nightly`)");
        return Ok(());
    }
    if !have("cargo", &["fuzz", "--version"]) {
        println!("fuzz: installing cargo-fuzz");
        run(Command::new("cargo").args(["install", "--quiet", "cargo-fuzz"]))?;
    }
    for target in TARGETS {
        println!("fuzz: {target} for {seconds} s");
        run(Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    Ok(())
}
