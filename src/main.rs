//! The `custos` binary: parses flags, sets up logging, and hands over to the
//! library (`server::run`, the CLI, or a simulator).

use std::{path::Path, process::ExitCode};

use clap::Parser;
use custos::{
    cli::{self, Cli, Command},
    config::{Config, LogFormat},
    dev, server,
};

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

#[tokio::main]
async fn main() -> ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve {
            config,
            dev,
            insecure,
            listen,
        } => serve(config, dev, insecure, listen).await,
        Command::Simulate {
            kind,
            listen,
            job_seconds,
        } => simulate(&kind, listen, job_seconds).await,
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
) -> anyhow::Result<i32> {
    let mut cfg = match &config {
        Some(p) => Config::load(Path::new(p))?,
        None if dev => Config::empty(),
        None => anyhow::bail!("give --config FILE, or --dev to try Custos with simulators"),
    };
    init_logging(cfg.log_format, cfg.log_level.as_deref());
    let dev_env = if dev {
        let env = dev::start(listen.as_deref().unwrap_or(&cfg.listen)).await?;
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
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if let Some(env) = &dev_env {
        println!("{}", env.banner(addr));
    }
    // One line that scripts and tests can wait for.
    println!("custos: listening on {addr}");
    let shutdown = server::shutdown_on_signal();
    server::run(
        cfg,
        listener,
        server::Mode {
            insecure: insecure || dev,
        },
        shutdown,
    )
    .await?;
    drop(dev_env);
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
            "{}: OK ({} token(s), backends: {}; data_dir {})",
            file.display(),
            cfg.tokens.len(),
            cfg.backends
                .iter()
                .map(|b| format!("{} ({})", b.name, b.kind))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.data_dir.display()
        );
        return Ok(0);
    }
    for p in &problems {
        println!("{}: {p}", file.display());
    }
    Ok(1)
}

async fn simulate(
    kind: &str,
    listen: std::net::SocketAddr,
    job_seconds: f64,
) -> anyhow::Result<i32> {
    init_logging(LogFormat::Text, None);
    match kind {
        "cf_v3" => {
            let cfg = custos_cf_v3::sim::SimConfig {
                job_duration: std::time::Duration::from_secs_f64(job_seconds.max(0.0)),
                ..Default::default()
            };
            let sim = custos_cf_v3::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: cf_v3 simulator listening on {}", sim.url());
            println!("  UAA client: {} / {}", cfg.client_id, cfg.client_secret);
            println!("  service instances: {}", ids.join(", "));
            server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        "cbr_v3" => {
            let d = std::time::Duration::from_secs_f64(job_seconds.max(0.0));
            let cfg = custos_cbr_v3::sim::SimConfig {
                restore_duration: d,
                backup_duration: d,
                ..Default::default()
            };
            let sim = custos_cbr_v3::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: cbr_v3 simulator listening on {}", sim.url());
            println!("  auth_url: {}", sim.auth_url());
            println!("  project_id: {}", ids.project_id);
            println!(
                "  user: {} (domain {}) / password {}",
                cfg.user_name, cfg.user_domain, cfg.password
            );
            println!("  vault: {}", ids.vault_id);
            println!(
                "  server {} with volumes {} (40 GB), {} (100 GB)",
                ids.server_id, ids.system_volume_id, ids.data_volume_id
            );
            println!(
                "  server backup {} (children {}, {}); disk backup {}",
                ids.server_backup_id, ids.system_child_id, ids.data_child_id, ids.disk_backup_id
            );
            server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        "vbs_v2" => {
            let d = std::time::Duration::from_secs_f64(job_seconds.max(0.0));
            let cfg = custos_vbs_v2::sim::SimConfig {
                restore_duration: d,
                backup_duration: d,
                ..Default::default()
            };
            let sim = custos_vbs_v2::sim::Simulator::start(listen, cfg.clone()).await?;
            let ids = sim.seed_demo();
            println!("custos: vbs_v2 simulator listening on {}", sim.url());
            println!("  auth_url: {}", sim.auth_url());
            println!("  project_id: {}", ids.project_id);
            println!(
                "  user: {} (domain {}) / password {}",
                cfg.user_name, cfg.user_domain, cfg.password
            );
            println!(
                "  volumes: {} (10 GiB, available), {} (10 GiB, in-use), {} (1 GiB, available)",
                ids.volume_id, ids.in_use_volume_id, ids.small_volume_id
            );
            println!("  backup {} of {}", ids.backup_id, ids.volume_id);
            server::shutdown_on_signal().cancelled().await;
            Ok(0)
        }
        other => anyhow::bail!("unknown --kind {other:?}: use cf_v3, cbr_v3 or vbs_v2"),
    }
}
