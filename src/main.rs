//! The `custos` binary: parses flags, sets up logging, and hands over to the
//! library (`server::run`, the CLI, or a simulator).

use std::{path::Path, process::ExitCode};

use clap::Parser;
use custos::{
    cli::{self, Cli, Command},
    config::{Config, LogFormat},
    server,
};

/// What `serve --dev` and `simulate` say in a build without simulators.
#[cfg(not(feature = "sim"))]
const NO_SIM: &str = "this custos was built without the simulators (cargo feature `sim`, on by default); `serve --dev` and `simulate` need them";

/// Logs to stderr: `RUST_LOG` if set, else the config's `log_level`, else
/// info.
fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::try_new(level.unwrap_or("info"))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    });
    // Colours only on a terminal: a log file or journald gets plain text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

/// jemalloc: the daemon allocates and frees small blocks from many
/// threads (tokio's workers, the flush's blocking thread, sled's); with
/// glibc's malloc, its arena locks and its freeing took a quarter of the
/// daemon's CPU in P2 (`perf`), and freed memory stayed resident unless
/// trimmed. `Cargo.toml` has the figures.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("custos: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let mut checkpoint = None;
    let code = runtime.block_on(run(&mut checkpoint));
    // Every task and blocking thread ends with the runtime, and every
    // handle of the store with them: only then can it be opened again.
    drop(runtime);
    if let Some((dir, engine)) = checkpoint {
        server::checkpoint_store(&dir, engine);
    }
    code
}

/// The store to checkpoint after the runtime is gone
/// (`server::checkpoint_store`).
type Checkpoint = Option<(std::path::PathBuf, custos::store::StoreEngine)>;

async fn run(checkpoint: &mut Checkpoint) -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve {
            config,
            dev,
            insecure,
            listen,
        } => serve(config, dev, insecure, listen, checkpoint).await,
        Command::Simulate {
            kind,
            listen,
            job_seconds,
        } => {
            init_logging(LogFormat::Text, None);
            #[cfg(feature = "sim")]
            let r = custos::dev::simulate(&kind, listen, job_seconds).await;
            #[cfg(not(feature = "sim"))]
            let r = {
                let _ = (kind, listen, job_seconds);
                Err(anyhow::anyhow!(NO_SIM))
            };
            r
        }
        Command::Config(cli::ConfigCmd::Check { file }) => config_check(&file),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "custos", &mut std::io::stdout());
            Ok(0)
        }
        cmd => cli::run_client(cmd, args.client).await,
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("custos: {e:#}");
            // An RPC's code chooses (`cli::exit`); anything else is 2.
            ExitCode::from(cli::exit::for_error(&e).clamp(1, 255) as u8)
        }
    }
}

async fn serve(
    config: Option<std::path::PathBuf>,
    dev: bool,
    insecure: bool,
    listen: Option<String>,
    checkpoint: &mut Checkpoint,
) -> anyhow::Result<i32> {
    let mut cfg = match &config {
        Some(p) => Config::load(Path::new(p))?,
        None if dev => Config::empty(),
        None => anyhow::bail!("give --config FILE, or --dev to try Custos with simulators"),
    };
    init_logging(cfg.log_format, cfg.log_level.as_deref());
    #[cfg(not(feature = "sim"))]
    if dev {
        anyhow::bail!(NO_SIM);
    }
    #[cfg(feature = "sim")]
    let dev_env = if dev {
        let env = custos::dev::start(listen.as_deref().unwrap_or(&cfg.listen)).await?;
        // A config file given with --dev adds its backends and tokens.
        let mut merged = env.config.clone();
        merged.backends.append(&mut cfg.backends);
        merged.tokens.append(&mut cfg.tokens);
        cfg = merged;
        Some(env)
    } else {
        None
    };
    if let Some(l) = listen {
        cfg.listen = l;
    }
    // Before anyone can see the daemon listening: from here on SIGHUP
    // never ends it (it reloads [tls]).
    custos::tls::on_sighup(cfg.tls.is_some());
    // The address is bound now (a port another process listens on fails
    // at once), but connections are refused until the store is open
    // (`server::run` listens then).
    let socket = server::bind(&cfg.listen).await?;
    #[cfg(feature = "sim")]
    let banner = match &dev_env {
        Some(env) => Some(env.banner(socket.local_addr()?)),
        None => None,
    };
    #[cfg(not(feature = "sim"))]
    let banner = None;
    let shutdown = server::shutdown_on_signal();
    let store = (cfg.data_dir.clone(), cfg.store_engine);
    server::run(
        cfg,
        socket,
        server::Mode {
            insecure: insecure || dev,
            banner,
        },
        shutdown,
    )
    .await?;
    #[cfg(feature = "sim")]
    drop(dev_env);
    // Not for `--dev`: its data dir (a temporary one) is gone.
    if !dev {
        *checkpoint = Some(store);
    }
    Ok(0)
}

/// `custos config check FILE`: every problem, or a summary; exit 1 on
/// problems.
fn config_check(file: &Path) -> anyhow::Result<i32> {
    let cfg = match Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            // The error names the file (and the key and line) itself.
            println!("{e}");
            return Ok(1);
        }
    };
    let problems = server::check_config(&cfg);
    if problems.is_empty() {
        println!(
            "{}: OK ({} token(s), backends: {}; data_dir {}, store_engine {})",
            file.display(),
            cfg.tokens.len(),
            cfg.backends
                .iter()
                .map(|b| format!("{} ({})", b.name, b.kind))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.data_dir.display(),
            cfg.store_engine
        );
        return Ok(0);
    }
    for p in &problems {
        println!("{}: {p}", file.display());
    }
    Ok(1)
}
