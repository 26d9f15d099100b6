use std::io::IsTerminal;
use std::process::ExitCode;
use tollgate_sidecar::config::{Cli, Command, LogFormat};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format);
            tollgate_sidecar::server::serve(args).await
        }
        Command::Rewrap(args) => {
            init_logging(args.log_format);
            tollgate_sidecar::rewrap::command(args).await
        }
        other => tollgate_sidecar::cli::run(other).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
