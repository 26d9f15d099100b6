//! Starting and stopping the local stack: Bedrock emulator, budget sidecar and
//! Envoy with the Wasm filter. Every child dies with us: on Ctrl-C or SIGTERM
//! the handler stops them, and `PR_SET_PDEATHSIG` covers a SIGKILL of xtask.

use crate::plan::{self, Launch};
use crate::setup::Tools;
use crate::{repo_root, state_dir, Store, UpArgs};
use anyhow::{bail, Context as _, Result};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const EMULATOR_ACCESS_KEY_ID: &str = "AKIATOLLGATEEMULATOR";
pub const EMULATOR_SECRET_ACCESS_KEY: &str = "tollgate-emulator-secret";

/// PIDs the signal handler must stop.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn install_signal_handler() {
    let _ = ctrlc::set_handler(|| {
        eprintln!("\nxtask: interrupted; stopping the stack");
        let pids = CHILDREN.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            // SAFETY: plain kill(2) on PIDs we spawned.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(500));
        std::process::exit(130);
    });
}

#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub listener: u16,
    pub envoy_admin: u16,
    pub sidecar: u16,
    pub emulator: u16,
}

impl Ports {
    pub const DEFAULT: Ports = Ports {
        listener: 10000,
        envoy_admin: 9901,
        sidecar: 9190,
        emulator: 9180,
    };

    /// Free ports, so a demo runs beside a `cargo xtask up` or a test run.
    pub fn ephemeral() -> Result<Ports> {
        let mut held = Vec::new();
        let mut next = || -> Result<u16> {
            let l = TcpListener::bind("127.0.0.1:0")?;
            let port = l.local_addr()?.port();
            held.push(l);
            Ok(port)
        };
        Ok(Ports {
            listener: next()?,
            envoy_admin: next()?,
            sidecar: next()?,
            emulator: next()?,
        })
    }
}

/// Fills `${NAME}` placeholders; an unknown placeholder is an error.
pub fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    if let Some(i) = out.find("${") {
        let name: String = out[i..].chars().take_while(|c| *c != '}').collect();
        bail!("template placeholder {name}}} has no value");
    }
    Ok(out)
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

pub struct Stack {
    procs: Vec<Proc>,
    dir: PathBuf,
    filter_token: FilterToken,
}

/// The token Envoy's filter sends to the sidecar, and the sidecar's token file.
#[derive(Debug, Clone)]
pub struct FilterToken {
    /// What Envoy gets in `TOLLGATE_FILTER_TOKEN`.
    pub token: String,
    /// The sidecar's `--filter-token-file`.
    pub file: PathBuf,
}

impl Stack {
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        install_signal_handler();
        Ok(Self {
            procs: Vec::new(),
            dir,
            filter_token: filter_token()?,
        })
    }

    pub fn filter_token(&self) -> &FilterToken {
        &self.filter_token
    }

    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> Result<()> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .current_dir(repo_root());
        let child = spawn_attached(&mut cmd).with_context(|| format!("cannot start {name}"))?;
        self.procs.push(Proc { name, child, log });
        Ok(())
    }

    /// Waits until `GET path` on `port` answers 200, or the process dies.
    fn wait_ready(&mut self, name: &str, port: u16, path: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if http_status(port, path) == Some(200) {
                return Ok(());
            }
            if let Some(p) = self.procs.iter_mut().find(|p| p.name == name) {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!(
                        "{name} exited ({status}) before it was ready:\n{}",
                        tail(&p.log, 30)
                    );
                }
            }
            if Instant::now() > deadline {
                let log = self
                    .procs
                    .iter()
                    .find(|p| p.name == name)
                    .map(|p| tail(&p.log, 30));
                bail!(
                    "{name} not ready on port {port} after 90 s\n{}",
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn start_emulator(&mut self, tools: &Tools, ports: Ports) -> Result<()> {
        self.launch("emulator", &plan::emulator(&tools.bin_dir(false), ports))
    }

    /// Starts a planned process and waits until it is ready.
    pub fn launch(&mut self, name: &'static str, launch: &Launch) -> Result<()> {
        self.start_process(
            name,
            launch.command(),
            launch.ready.port,
            &launch.ready.path,
        )
    }

    pub fn start_sidecar(
        &mut self,
        tools: &Tools,
        ports: Ports,
        db: &Path,
        seed: Option<&Path>,
        admin_token: &str,
    ) -> Result<()> {
        self.start_sidecar_on(tools, ports, db, seed, admin_token, None)
    }

    /// Starts dynalite (in memory) on a free loopback port; returns its endpoint.
    pub fn start_dynalite(&mut self, tools: &Tools) -> Result<String> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(&tools.dynalite);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--createTableMs", "0", "--deleteTableMs", "0"])
            .args(["--updateTableMs", "0"]);
        self.spawn("dynalite", cmd)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(p) = self.procs.iter_mut().find(|p| p.name == "dynalite") {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!("dynalite exited ({status}):\n{}", tail(&p.log, 30));
                }
            }
            if Instant::now() > deadline {
                bail!("dynalite did not listen on {addr} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(format!("http://{addr}"))
    }

    /// `dynamo`: the environment for a DynamoDB store (endpoint, region, and
    /// dummy credentials when the endpoint is our own dynalite), or `None` for
    /// the embedded store.
    pub fn start_sidecar_on(
        &mut self,
        tools: &Tools,
        ports: Ports,
        db: &Path,
        seed: Option<&Path>,
        admin_token: &str,
        dynamo: Option<&[(String, String)]>,
    ) -> Result<()> {
        let bin_dir = tools.bin_dir(false);
        if let Some(env) = dynamo {
            let mut init = Command::new(bin_dir.join("tollgate-sidecar"));
            init.args(["dynamodb", "init"]).envs(env.iter().cloned());
            crate::run(&mut init).context("creating the DynamoDB tables")?;
        }
        let secret_key = secret_key()?;
        let mut launch = plan::sidecar(
            &bin_dir,
            ports,
            &plan::SidecarSpec {
                db,
                filter_token_file: &self.filter_token.file,
                admin_token,
                secret_key: &secret_key,
                seed,
                dynamodb: dynamo.is_some(),
            },
        );
        launch
            .env
            .extend(dynamo.unwrap_or_default().iter().cloned());
        self.launch("sidecar", &launch)
    }

    pub fn start_envoy(&mut self, tools: &Tools, config: &str, ports: Ports) -> Result<()> {
        let path = self.dir.join("envoy.yaml");
        std::fs::write(&path, config)?;
        let launch = plan::envoy(&tools.envoy(), &path, ports, 2, &self.filter_token.token);
        self.launch("envoy", &launch)?;
        // The listener accepts once Envoy is LIVE; check it anyway.
        let addr: SocketAddr = ([127, 0, 0, 1], ports.listener).into();
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| {
            format!("Envoy listener 127.0.0.1:{} not accepting", ports.listener)
        })?;
        Ok(())
    }

    /// Starts `cmd` as process `name` (logs in `logs/{name}.log`) and waits until
    /// `GET ready_path` on `port` answers 200. For callers that build their own
    /// command lines (release binaries, several Envoys).
    pub fn start_process(
        &mut self,
        name: &'static str,
        cmd: Command,
        port: u16,
        ready_path: &str,
    ) -> Result<()> {
        self.spawn(name, cmd)?;
        self.wait_ready(name, port, ready_path)
    }

    /// The PID of a running process started by this stack.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Blocks until a child exits (or we are interrupted).
    pub fn wait_any(&mut self) -> Result<()> {
        loop {
            for p in &mut self.procs {
                if let Ok(Some(status)) = p.child.try_wait() {
                    bail!("{} exited ({status}):\n{}", p.name, tail(&p.log, 30));
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops one process (SIGTERM, then SIGKILL after 5 s); the rest keep running.
    pub fn stop_one(&mut self, name: &str) {
        let Some(i) = self.procs.iter().position(|p| p.name == name) else {
            return;
        };
        let mut p = self.procs.remove(i);
        // SAFETY: plain kill(2) on a child we spawned.
        unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.retain(|&pid| pid != p.child.id());
        }
    }

    pub fn stop(&mut self) {
        for p in self.procs.iter().rev() {
            // SAFETY: plain kill(2) on a child we spawned.
            unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in self.procs.iter_mut().rev() {
            while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.procs.clear();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.clear();
        }
    }
}

/// Spawns a child that dies with us: registered for the signal handler, and
/// `PR_SET_PDEATHSIG` for when we are killed outright.
fn spawn_attached(cmd: &mut Command) -> Result<Child> {
    // SAFETY: prctl is async-signal-safe; runs in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if let Ok(mut pids) = CHILDREN.lock() {
        pids.push(child.id());
    }
    Ok(child)
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Minimal HTTP/1.1 GET, enough for readiness probes.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The key sealing SigV4 secrets: `TOLLGATE_SECRET_KEY` when set, else one kept
/// in `.tollgate/secret.key` so issued credentials survive restarts.
pub fn secret_key() -> Result<String> {
    if let Ok(k) = std::env::var("TOLLGATE_SECRET_KEY") {
        if !k.trim().is_empty() {
            return Ok(k);
        }
    }
    let path = state_dir().join("secret.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    let k = random_token()? + &random_token()?[..16];
    std::fs::create_dir_all(state_dir())?;
    std::fs::write(&path, &k)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(k)
}

/// The filter token: the sidecar reads its accepted tokens from
/// `.tollgate/filter-token` (one per line; created with a random token when
/// missing), Envoy sends `TOLLGATE_FILTER_TOKEN` when that is set, else the
/// file's last token (rotation: append a new token, restart the stack, remove
/// the old line).
pub fn filter_token() -> Result<FilterToken> {
    let file = state_dir().join("filter-token");
    let read = |text: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
    };
    let from_file = match std::fs::read_to_string(&file) {
        Ok(text) => read(&text),
        Err(_) => None,
    };
    let from_file = match from_file {
        Some(t) => t,
        None => {
            let t = random_token()?;
            std::fs::create_dir_all(state_dir())?;
            std::fs::write(
                &file,
                format!("# Filter tokens the sidecar accepts (x-tollgate-filter-token), one per line.\n{t}\n"),
            )?;
            std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            t
        }
    };
    let token = match std::env::var("TOLLGATE_FILTER_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
        _ => from_file,
    };
    Ok(FilterToken { token, file })
}

pub fn random_token() -> Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub fn emulator_envoy_config(tools: &Tools, ports: Ports, region: &str) -> Result<String> {
    render_emulator_config(
        &tools.wasm_path(),
        &tools.tls_cert(),
        &tools.tls_key(),
        ports,
        region,
    )
}

/// `envoy/emulator.yaml` for these ports and files.
pub fn render_emulator_config(
    wasm: &Path,
    tls_cert: &Path,
    tls_key: &Path,
    ports: Ports,
    region: &str,
) -> Result<String> {
    let template = std::fs::read_to_string(repo_root().join("envoy/emulator.yaml"))?;
    render(
        &template,
        &[
            ("ENVOY_ADMIN_PORT", ports.envoy_admin.to_string()),
            ("LISTENER_PORT", ports.listener.to_string()),
            ("WASM_PATH", wasm.display().to_string()),
            ("AWS_REGION", region.to_owned()),
            ("EMULATOR_ACCESS_KEY_ID", EMULATOR_ACCESS_KEY_ID.to_owned()),
            (
                "EMULATOR_SECRET_ACCESS_KEY",
                EMULATOR_SECRET_ACCESS_KEY.to_owned(),
            ),
            ("BEDROCK_PORT", ports.emulator.to_string()),
            ("SIDECAR_PORT", ports.sidecar.to_string()),
            ("TLS_CERT", tls_cert.display().to_string()),
            ("TLS_KEY", tls_key.display().to_string()),
        ],
    )
}

/// Splits `https://host[:port]` into host, port and TLS.
fn parse_endpoint(url: &str) -> Result<(String, u16, bool)> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("--bedrock-endpoint must start with http:// or https://, got {url}");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse().with_context(|| format!("bad port in {url}"))?,
        ),
        None => (authority.to_owned(), if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        bail!("--bedrock-endpoint has no host: {url}");
    }
    Ok((host, port, tls))
}

/// Where distributions keep the system CA bundle: Debian/Ubuntu/Alpine,
/// Fedora/RHEL/Amazon Linux, openSUSE, macOS.
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The CA bundle Envoy verifies Bedrock with: the one given, or the system's.
fn trusted_ca(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("--trusted-ca {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    SYSTEM_CA_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no system CA bundle found (looked for {}); pass --trusted-ca or set TOLLGATE_TRUSTED_CA",
                SYSTEM_CA_BUNDLES.join(", ")
            )
        })
}

pub fn aws_envoy_config(
    tools: &Tools,
    ports: Ports,
    region: &str,
    endpoint: &str,
    ca: Option<&Path>,
) -> Result<String> {
    let (host, port, tls) = parse_endpoint(endpoint)?;
    let mut template = std::fs::read_to_string(repo_root().join("envoy/aws.yaml"))?;
    if !tls {
        let start = template
            .find("    # BEGIN TLS")
            .context("aws.yaml lacks the TLS markers")?;
        let end = template
            .find("    # END TLS\n")
            .context("aws.yaml lacks the TLS markers")?;
        template.replace_range(start..end + "    # END TLS\n".len(), "");
    }
    let ca = if tls {
        trusted_ca(ca)?.display().to_string()
    } else {
        String::new()
    };
    render(
        &template,
        &[
            ("ENVOY_ADMIN_PORT", ports.envoy_admin.to_string()),
            ("LISTENER_PORT", ports.listener.to_string()),
            ("WASM_PATH", tools.wasm_path().display().to_string()),
            ("AWS_REGION", region.to_owned()),
            ("BEDROCK_HOST", host),
            ("BEDROCK_PORT", port.to_string()),
            ("TRUSTED_CA", ca),
            ("SIDECAR_PORT", ports.sidecar.to_string()),
            ("TLS_CERT", tools.tls_cert().display().to_string()),
            ("TLS_KEY", tools.tls_key().display().to_string()),
        ],
    )
}

pub fn up(tools: &Tools, args: &UpArgs) -> Result<()> {
    let ports = Ports::DEFAULT;
    let dir = state_dir().join("up");
    let mut stack = Stack::new(dir.clone())?;
    let admin_token = match std::env::var("TOLLGATE_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let t = random_token()?;
            println!("TOLLGATE_ADMIN_TOKEN was unset; generated one for this run:\n    export TOLLGATE_ADMIN_TOKEN={t}");
            t
        }
    };
    let config = match &args.bedrock_endpoint {
        Some(endpoint) => aws_envoy_config(
            tools,
            ports,
            &args.region,
            endpoint,
            args.trusted_ca.as_deref(),
        )?,
        None => {
            stack.start_emulator(tools, ports)?;
            emulator_envoy_config(tools, ports, &args.region)?
        }
    };
    let seed = args
        .config
        .clone()
        .unwrap_or_else(|| repo_root().join("examples/seed.json"));
    let dynamo = match args.store {
        Store::Embedded => None,
        Store::Dynamodb => Some(dynamo_env(tools, &mut stack, &args.region)?),
    };
    stack.start_sidecar_on(
        tools,
        ports,
        &state_dir().join("ledger.db"),
        Some(&seed),
        &admin_token,
        dynamo.as_ref().map(|(env, _)| env.as_slice()),
    )?;
    stack.start_envoy(tools, &config, ports)?;
    println!("Tollgate is up:");
    if let Some((_, endpoint)) = &dynamo {
        println!("  ledger                              DynamoDB at {endpoint}");
    }
    println!(
        "  gateway (Bedrock Runtime endpoint)  https://127.0.0.1:{}",
        ports.listener
    );
    println!(
        "  CA of the gateway's certificate     {}  (export AWS_CA_BUNDLE=...)",
        tools.tls_ca().display()
    );
    println!(
        "  sidecar API, /metrics, /healthz     http://127.0.0.1:{}",
        ports.sidecar
    );
    println!(
        "  filter token (Envoy -> sidecar)     {}",
        stack.filter_token().file.display()
    );
    println!(
        "  Envoy admin                         http://127.0.0.1:{}",
        ports.envoy_admin
    );
    match &args.bedrock_endpoint {
        Some(e) => println!("  upstream                            {e} (signed with the standard AWS credential chain)"),
        None => println!("  upstream                            Bedrock emulator http://127.0.0.1:{}", ports.emulator),
    }
    println!(
        "  logs                                {}",
        dir.join("logs").display()
    );
    println!("Press Ctrl-C to stop.");
    stack.wait_any()
}

/// `tollgate-sidecar doctor` against the stack of `cargo xtask up` (default
/// ports). On the emulator, Envoy signs with the emulator's credentials, so the
/// AWS checks use those against the emulator's STS stand-in; with a real
/// Bedrock endpoint they use the caller's environment, as Envoy does.
pub fn doctor(tools: &Tools) -> Result<()> {
    let ports = Ports::DEFAULT;
    let mut cmd = Command::new(tools.bin_dir(false).join("tollgate-sidecar"));
    cmd.arg("doctor")
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", ports.sidecar))
        .arg("--envoy-admin")
        .arg(format!("http://127.0.0.1:{}", ports.envoy_admin));
    if http_status(ports.emulator, "/_emulator/requests").is_some() {
        cmd.env(
            "AWS_ENDPOINT_URL_STS",
            format!("http://127.0.0.1:{}", ports.emulator),
        )
        .env("AWS_ACCESS_KEY_ID", EMULATOR_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", EMULATOR_SECRET_ACCESS_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE");
    }
    crate::run(&mut cmd)
}

/// The DynamoDB store's environment: the caller's `AWS_ENDPOINT_URL_DYNAMODB`
/// (real DynamoDB or their own local server, with their credentials), else a
/// dynalite we start, with dummy credentials. Returns (env, endpoint shown).
fn dynamo_env(
    tools: &Tools,
    stack: &mut Stack,
    region: &str,
) -> Result<(Vec<(String, String)>, String)> {
    let mut env = Vec::new();
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        env.push(("AWS_REGION".to_string(), region.to_string()));
    }
    let endpoint = match std::env::var("AWS_ENDPOINT_URL_DYNAMODB") {
        Ok(e) if !e.is_empty() => e,
        _ => {
            let e = stack.start_dynalite(tools)?;
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".to_string(), e.clone()));
            env.push(("AWS_ACCESS_KEY_ID".to_string(), "dummy".to_string()));
            env.push(("AWS_SECRET_ACCESS_KEY".to_string(), "dummy".to_string()));
            env.push(("AWS_REGION".to_string(), "us-east-1".to_string()));
            format!("{e} (dynalite, in memory)")
        }
    };
    Ok((env, endpoint))
}

pub fn demo(tools: &Tools) -> Result<()> {
    let ports = Ports::ephemeral()?;
    let dir = state_dir().join("demo");
    let _ = std::fs::remove_dir_all(&dir);
    let mut stack = Stack::new(dir.clone())?;
    let admin_token = random_token()?;
    println!(
        "demo: starting emulator, sidecar and Envoy (logs in {})",
        dir.join("logs").display()
    );
    stack.start_emulator(tools, ports)?;
    stack.start_sidecar(
        tools,
        ports,
        &dir.join("ledger.db"),
        Some(&repo_root().join("examples/seed.json")),
        &admin_token,
    )?;
    stack.start_envoy(
        tools,
        &emulator_envoy_config(tools, ports, "us-east-1")?,
        ports,
    )?;
    let mut client = Command::new(tools.python());
    client
        .arg(repo_root().join("examples/demo_budget_exhaustion.py"))
        .args([
            "--gateway",
            &format!("https://127.0.0.1:{}", ports.listener),
        ])
        .args(["--sidecar", &format!("http://127.0.0.1:{}", ports.sidecar)])
        .env("AWS_CA_BUNDLE", tools.tls_ca())
        .env("TOLLGATE_ADMIN_TOKEN", &admin_token)
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(repo_root());
    let status = spawn_attached(&mut client)?
        .wait()
        .context("running examples/demo_budget_exhaustion.py")?;
    stack.stop();
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_ca_is_the_given_file_or_refused() {
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(trusted_ca(Some(&here)).unwrap(), here);
        let err = trusted_ca(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn render_fills_and_refuses_unknown_placeholders() {
        assert_eq!(render("a ${X} b", &[("X", "1".into())]).unwrap(), "a 1 b");
        assert!(render("a ${Y}", &[("X", "1".into())]).is_err());
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("https://bedrock-runtime.us-east-1.amazonaws.com").unwrap(),
            ("bedrock-runtime.us-east-1.amazonaws.com".into(), 443, true)
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:9180/").unwrap(),
            ("127.0.0.1".into(), 9180, false)
        );
        assert!(parse_endpoint("ftp://x").is_err());
    }
}
