//! The `pgmoat` command line: parses arguments, sets up logging, and hands over to the
//! library. The only place that uses `anyhow`.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgmoat::config::Config;
use pgmoat::lifecycle::Server;

#[derive(Parser)]
#[command(
    name = "pgmoat",
    version,
    about = "A PostgreSQL connection pooler that puts a TLS moat around the database"
)]
struct Cli {
    /// Log format (levels come from RUST_LOG, default info).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "PGMOAT_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pooler.
    Run {
        /// Config file (TOML). Without one, settings come from PGMOAT_* variables only.
        #[arg(short, long, env = "PGMOAT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Check a config file (and the certificates, keys and auth_file it names) and print the
    /// effective settings; exits non-zero with file, key and reason on any error.
    CheckConfig {
        #[arg(env = "PGMOAT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Start a throwaway TLS PostgreSQL, make certificates, run pgmoat in front of it and
    /// print a psql command that connects through it.
    Demo {
        /// Port for pgmoat to listen on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
    /// The built-in certificate tool: a CA, server and client certificates, expiry checks.
    Certs {
        #[command(subcommand)]
        command: pgmoat::certs::cli::CertsCommand,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // cron and monitoring read `certs check`'s exit code: bad arguments are UNKNOWN (3),
        // not clap's 2, which would read as CRITICAL.
        Err(e) if e.use_stderr() && is_certs_check(std::env::args_os()) => {
            let _ = e.print();
            return ExitCode::from(pgmoat::certs::cli::EXIT_UNKNOWN);
        }
        Err(e) => e.exit(),
    };
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgmoat: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether the command line is a `pgmoat [OPTIONS] certs check ...` (judged by its words alone,
/// since clap could not parse it).
fn is_certs_check(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let words: Vec<String> = args
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    words.windows(2).any(|w| w[0] == "certs" && w[1] == "check")
}

/// The error and its causes, each once: many library errors already quote their source in
/// their own message, so a cause whose text is already there is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt, prelude::*};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (text, json) = match format {
        // Colours only for a terminal: log files and log collectors get plain text.
        LogFormat::Text => (
            Some(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            ),
            None,
        ),
        LogFormat::Json => (None, Some(fmt::layer().json().with_writer(std::io::stderr))),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
}

/// The main thread's event loop: accepting, signals, reloads, the janitor and /metrics.
/// Clients run on the worker threads (`pgmoat::workers`).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            runtime()?.block_on(async {
                let server = Server::bind(config).await?;
                server.run().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { port } => {
            demo::run(port)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs { command } => Ok(pgmoat::certs::cli::run(command)?),
        Command::CheckConfig { config } => {
            let config = Config::load(config.as_deref(), std::env::vars())?;
            pgmoat::tls::install_default_provider();
            pgmoat::generation::load_generation(config.clone(), None)?;
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            println!("{}", config.redacted_summary());
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
    }
}
