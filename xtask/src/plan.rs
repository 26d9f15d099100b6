//! How each process of the local stack is started, defined once: xtask's own
//! `Stack` (`up`, `demo`, `bench`) launches from these, and the Python e2e
//! harness gets the same launches from `cargo xtask plan` (JSON) rather than
//! keeping its own copy of the command lines and the Envoy config.

use crate::stack::{Ports, EMULATOR_ACCESS_KEY_ID, EMULATOR_SECRET_ACCESS_KEY};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One process: what to run, and when it is ready.
#[derive(Debug, Clone, Serialize)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Added to the caller's environment.
    pub env: BTreeMap<String, String>,
    /// Ready when `GET http://127.0.0.1:{port}{path}` answers 200.
    pub ready: Ready,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ready {
    pub port: u16,
    pub path: String,
}

impl Launch {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).envs(&self.env);
        cmd
    }

    fn new(program: PathBuf, port: u16, path: &str) -> Self {
        Self {
            program,
            args: Vec::new(),
            env: BTreeMap::new(),
            ready: Ready {
                port,
                path: path.to_owned(),
            },
        }
    }

    fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The Bedrock emulator, verifying SigV4 with the gateway's credentials.
pub fn emulator(bin_dir: &Path, ports: Ports) -> Launch {
    Launch::new(
        bin_dir.join("bedrock-emulator"),
        ports.emulator,
        "/_emulator/health",
    )
    .args([
        "--listen".to_owned(),
        format!("127.0.0.1:{}", ports.emulator),
        "--access-key-id".to_owned(),
        EMULATOR_ACCESS_KEY_ID.to_owned(),
        "--secret-access-key".to_owned(),
        EMULATOR_SECRET_ACCESS_KEY.to_owned(),
    ])
}

/// What a sidecar of the stack is given.
#[derive(Debug, Clone)]
pub struct SidecarSpec<'a> {
    pub db: &'a Path,
    pub filter_token_file: &'a Path,
    pub admin_token: &'a str,
    pub secret_key: &'a str,
    pub seed: Option<&'a Path>,
    /// `--store dynamodb` (its endpoint and credentials come from the environment).
    pub dynamodb: bool,
}

/// `tollgate-sidecar serve` on loopback.
pub fn sidecar(bin_dir: &Path, ports: Ports, spec: &SidecarSpec<'_>) -> Launch {
    let mut l = Launch::new(bin_dir.join("tollgate-sidecar"), ports.sidecar, "/healthz")
        .args([
            "serve".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{}", ports.sidecar),
            "--db".to_owned(),
            path_arg(spec.db),
            "--filter-token-file".to_owned(),
            path_arg(spec.filter_token_file),
        ])
        .env("TOLLGATE_ADMIN_TOKEN", spec.admin_token)
        .env("TOLLGATE_SECRET_KEY", spec.secret_key);
    if let Some(seed) = spec.seed {
        l = l.args(["--seed".to_owned(), path_arg(seed)]);
    }
    if spec.dynamodb {
        l = l.args(["--store", "dynamodb"]);
    }
    l
}

/// Envoy with a rendered config; the filter's token comes from its environment.
pub fn envoy(
    envoy_bin: &Path,
    config: &Path,
    ports: Ports,
    workers: u32,
    filter_token: &str,
) -> Launch {
    Launch::new(envoy_bin.to_path_buf(), ports.envoy_admin, "/ready")
        .args([
            "-c".to_owned(),
            path_arg(config),
            "--concurrency".to_owned(),
            workers.to_string(),
            "--log-level".to_owned(),
            "warn".to_owned(),
            // One base id per Envoy, so several run side by side.
            "--base-id".to_owned(),
            ports.envoy_admin.to_string(),
            // Access-log lines reach stdout within a second (Envoy's default
            // is 10 s), so a local stack's log can be followed as it happens.
            "--file-flush-interval-msec".to_owned(),
            "1000".to_owned(),
        ])
        .env("TOLLGATE_FILTER_TOKEN", filter_token)
}

/// `cargo xtask plan`: the stack's launches and Envoy config for given ports
/// and secrets, as JSON on stdout.
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Where the config file and the ledger go.
    #[arg(long)]
    pub workdir: PathBuf,
    #[arg(long)]
    pub listener_port: u16,
    #[arg(long)]
    pub envoy_admin_port: u16,
    #[arg(long)]
    pub sidecar_port: u16,
    #[arg(long)]
    pub emulator_port: u16,
    #[arg(long)]
    pub admin_token: String,
    #[arg(long)]
    pub secret_key: String,
    #[arg(long)]
    pub filter_token: String,
    #[arg(long)]
    pub filter_token_file: PathBuf,
    /// Directory of the host binaries (default: target/debug).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The filter (default: the lean release build).
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// The Envoy binary (default: the one in .tollgate/venv).
    #[arg(long)]
    pub envoy: Option<PathBuf>,
    /// Directory with gateway.pem and gateway.key (default: .tollgate/tls).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub envoy_workers: u32,
}

#[derive(Serialize)]
struct Plan {
    emulator: Launch,
    sidecar: Launch,
    envoy: Launch,
    /// The rendered `envoy/emulator.yaml`; `envoy.args` name `envoy_config_path`.
    envoy_config: String,
    envoy_config_path: PathBuf,
}

pub fn plan(args: &PlanArgs) -> Result<()> {
    let root = crate::repo_root();
    let state = crate::state_dir();
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| root.join("target/debug"));
    let wasm = args.wasm.clone().unwrap_or_else(crate::setup::wasm_path);
    let envoy_bin = args
        .envoy
        .clone()
        .unwrap_or_else(|| state.join("venv/bin/envoy"));
    let tls = args.tls_dir.clone().unwrap_or_else(|| state.join("tls"));
    let ports = Ports {
        listener: args.listener_port,
        envoy_admin: args.envoy_admin_port,
        sidecar: args.sidecar_port,
        emulator: args.emulator_port,
    };
    let config_path = args.workdir.join("envoy.yaml");
    let db = args.workdir.join("ledger.db");
    let plan = Plan {
        emulator: emulator(&bin_dir, ports),
        sidecar: sidecar(
            &bin_dir,
            ports,
            &SidecarSpec {
                db: &db,
                filter_token_file: &args.filter_token_file,
                admin_token: &args.admin_token,
                secret_key: &args.secret_key,
                seed: None,
                dynamodb: false,
            },
        ),
        envoy: envoy(
            &envoy_bin,
            &config_path,
            ports,
            args.envoy_workers,
            &args.filter_token,
        ),
        envoy_config: crate::stack::render_emulator_config(
            &wasm,
            &tls.join("gateway.pem"),
            &tls.join("gateway.key"),
            ports,
            "us-east-1",
        )?,
        envoy_config_path: config_path,
    };
    println!("{}", serde_json::to_string_pretty(&plan)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_launch_carries_its_secrets_in_the_environment_only() {
        let ports = Ports::DEFAULT;
        let l = sidecar(
            Path::new("/bin"),
            ports,
            &SidecarSpec {
                db: Path::new("/tmp/l.db"),
                filter_token_file: Path::new("/tmp/tokens"),
                admin_token: "adm",
                secret_key: "sek",
                seed: None,
                dynamodb: true,
            },
        );
        assert_eq!(l.program, Path::new("/bin/tollgate-sidecar"));
        assert_eq!(&l.args[..3], ["serve", "--listen", "127.0.0.1:9190"]);
        assert!(l.args.ends_with(&["--store".into(), "dynamodb".into()]));
        assert!(!l.args.iter().any(|a| a == "adm" || a == "sek"));
        assert_eq!(l.env["TOLLGATE_ADMIN_TOKEN"], "adm");
        assert_eq!((l.ready.port, l.ready.path.as_str()), (9190, "/healthz"));
    }
}
