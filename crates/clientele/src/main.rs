//! The `clientele` binary: a thin layer that parses the command line and wires the crates
//! together. No domain logic lives here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// The proxy allocates and frees small buffers on every request from several threads; glibc's
/// allocator showed up at about 6% of the gateway's CPU in profiles. The `system-alloc` feature
/// leaves it out, so heap profilers that hook malloc (heaptrack, valgrind's massif) see every
/// allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc keeps the pages a burst freed (a bulk ingest, a backfill, a large report) until the
/// thread that freed them allocates again, and past a purge delay: an idle server held about
/// three times its live heap. Purging at once hands them back to the system: measured with
/// 600,000 ingested events, RSS 30 s after ingest went from 773 to 471 MiB. The environment's
/// `MIMALLOC_PURGE_DELAY`, when set, wins.
#[cfg(not(feature = "system-alloc"))]
fn purge_freed_pages_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    /// `mi_option_purge_delay` of mimalloc's `mi_option_e` (the same place in v2 and v3; the
    /// sys crate leaves the constant out).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: `mi_option_set` stores an integer in mimalloc's option table, which mimalloc
    // reads atomically; it may be called at any time from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

/// mimalloc asks for transparent huge pages on its segments, and a 2 MiB page is resident whole
/// however little of it is live: in the 30-minute soak at 10,000 consumers half the heap sat in
/// huge pages (310 of 635 MiB). Redis and MongoDB tell users to disable THP for this bloat. A
/// soak with them off ended at the same RSS on a busy machine, so the gain is not measured
/// here. Disabled for the process before anything large is allocated; the environment's
/// `MIMALLOC_ALLOW_THP`, when set, wins.
#[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
fn no_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a flag of this
    // process's memory map; no memory is read or written through them.
    #[allow(unsafe_code)]
    let done = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if done != 0 {
        // An old kernel without the option: huge pages stay as the system has them.
        tracing::debug!("prctl(PR_SET_THP_DISABLE) failed; transparent huge pages unchanged");
    }
}

/// The bytes mimalloc holds committed from the system, for `GET /v1/status`: with the purge
/// delay at 0 this is the live heap plus the partly used pages it cannot return.
#[cfg(not(feature = "system-alloc"))]
pub(crate) fn allocator_committed() -> Option<u64> {
    let (mut elapsed, mut user, mut system) = (0usize, 0usize, 0usize);
    let (mut rss, mut peak_rss, mut commit, mut peak_commit, mut faults) = (0, 0, 0, 0, 0);
    // SAFETY: `mi_process_info` only writes through the pointers it is given, each to a live
    // local `usize` of this frame.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed,
            &mut user,
            &mut system,
            &mut rss,
            &mut peak_rss,
            &mut commit,
            &mut peak_commit,
            &mut faults,
        );
    }
    u64::try_from(commit).ok()
}

/// The system allocator reports nothing comparable.
#[cfg(feature = "system-alloc")]
pub(crate) fn allocator_committed() -> Option<u64> {
    None
}

mod cli;
mod client;
mod cluster;
mod consumers_import;
mod contract;
mod control_plane;
mod demo;
mod demo_history;
mod exports;
mod findings_cli;
mod follow;
mod logformat;
mod logimport;
mod report_cli;
mod server;

#[derive(Parser)]
#[command(
    name = "clientele",
    version,
    about = "Consumer-aware API gateway and analytics: every request attributed to the consumer who made it",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway, the admin/query API and the event pipeline.
    Serve {
        /// Config file (TOML). Without it, embedded defaults: gateway on 127.0.0.1:8080, admin
        /// on 127.0.0.1:8081, data in ./clientele-data.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Start everything with a sample upstream and synthetic traffic from many consumers.
    Demo(demo::DemoArgs),
    /// Manage consumers through the admin API.
    #[command(subcommand)]
    Consumers(cli::ConsumersCmd),
    /// Manage API keys through the admin API.
    #[command(subcommand)]
    Keys(cli::KeysCmd),
    /// Send access logs (Clientele NDJSON, nginx, Kong or Envoy JSON) to a running server.
    Import(logimport::ImportArgs),
    /// Import consumers, their existing keys (stored hashed) and limits from Kong's kong.yaml or a CSV.
    ImportConsumers(consumers_import::ImportConsumersArgs),
    /// List what the detectors noticed: anomalies per consumer, error concentration, ...
    Findings(findings_cli::FindingsArgs),
    /// Create or upgrade the control plane's schema ([storage] backend = "postgres"), then exit.
    /// `serve` does the same at start-up; this runs it alone, for a deploy step.
    Migrate {
        /// Config file (TOML) naming the database.
        #[arg(long, short = 'c', value_name = "PATH")]
        config: PathBuf,
    },
    /// Print a report: portfolio, outreach, pricing, sla, deprecation or agents (table, --json or --csv).
    Report(report_cli::ReportArgs),
}

/// How CLI commands reach a running server.
#[derive(Args, Clone, Debug)]
pub struct Remote {
    /// Admin API base URL.
    #[arg(
        long,
        env = "CLIENTELE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub admin_url: String,
    /// Admin token. Defaults to the token file in ./clientele-data when the server generated one.
    #[arg(
        long,
        env = "CLIENTELE_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

fn main() -> ExitCode {
    #[cfg(not(feature = "system-alloc"))]
    purge_freed_pages_at_once();
    #[cfg(all(target_os = "linux", not(feature = "system-alloc")))]
    no_transparent_huge_pages();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and versions to stdout with success, and usage errors as one
            // clear message with a hint; either way no backtrace.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { config } => serve(config).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Consumers(cmd) => cli::consumers(cmd).await,
        Command::Keys(cmd) => cli::keys(cmd).await,
        Command::Import(args) => logimport::run(args).await,
        Command::ImportConsumers(args) => consumers_import::run(args).await,
        Command::Findings(args) => findings_cli::run(args).await,
        Command::Migrate { config } => {
            let config = clientele_core::config::Config::load(&config)?;
            println!("{}", control_plane::migrate(&config.storage).await?);
            Ok(())
        }
        Command::Report(args) => report_cli::run(args).await,
    }
}

async fn serve(config_path: Option<PathBuf>) -> Result<()> {
    let config = match &config_path {
        Some(path) => clientele_core::config::Config::load(path)?,
        None => clientele_core::config::Config::parse("", "defaults", std::path::Path::new("."))?,
    };
    let running = server::start(config).await?;
    tracing::info!(gateway = %running.gateway_addr, admin = %running.admin_addr, data_dir = %running.data_dir.display(), "clientele serving");
    if let Some(path) = &running.token_file {
        tracing::info!(token_file = %path.display(), "no admin token configured; using the generated token in this file");
    }
    server::termination().await;
    tracing::info!("shutting down: draining in-flight requests");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CLIENTELE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
