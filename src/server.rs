//! `run`: the daemon's life from an open listener to a clean stop.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use tokio::net::TcpSocket;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{
        self, Service,
        auth::{Auth, Caller},
    },
    backends,
    config::{Config, TokenConfig, resolve_secret},
    engine::{BackendEntry, Engine, EngineSettings},
    schedule::{Scheduler, SystemClock},
    store::Store,
    telemetry,
    tls::Tls,
};

/// How the daemon was started.
#[derive(Debug, Clone, Default)]
pub struct Mode {
    /// Serve without client tokens (everyone is an operator).
    pub insecure: bool,
    /// Printed once the daemon serves, before the line scripts wait for
    /// (`serve --dev`'s banner: its commands work from then on).
    pub banner: Option<String>,
}

/// One `[[tokens]]` entry: its secret value and who it makes the caller.
fn client_token(config: &Config, t: &TokenConfig) -> anyhow::Result<(String, Caller)> {
    let value = resolve_secret(
        "token",
        &t.token,
        &t.token_env,
        &t.token_file,
        config.allow_inline_secrets,
    )
    .map_err(|e| anyhow::anyhow!("token {:?}: {e}", t.name))?
    .ok_or_else(|| anyhow::anyhow!("token {:?}: set token_env or token_file", t.name))?;
    if value.expose().len() < 16 {
        anyhow::bail!(
            "token {:?}: a client token must be at least 16 characters",
            t.name
        );
    }
    Ok((
        value.expose().to_string(),
        Caller {
            name: t.name.clone(),
            role: t.role,
        },
    ))
}

/// Everything `run` would refuse in a loaded config, all at once (for
/// `custos config check`): tokens, backends with their secrets, the data
/// dir. Nothing is started and no backend is called.
pub fn check_config(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if config.tokens.is_empty() {
        problems.push(
            "no [[tokens]]: the daemon refuses to serve an open API (unless started with --insecure)"
                .to_string(),
        );
    }
    let mut names = std::collections::HashSet::new();
    for t in &config.tokens {
        if !names.insert(&t.name) {
            problems.push(format!("token {:?}: the name is used twice", t.name));
        }
        if let Err(e) = client_token(config, t) {
            problems.push(e.to_string());
        }
    }
    for b in &config.backends {
        if let Err(e) = backends::build(b, config.allow_inline_secrets) {
            problems.push(e.to_string());
        }
    }
    if let Some(t) = &config.tls
        && let Err(e) = t
            .read()
            .map_err(anyhow::Error::from)
            .and_then(|f| crate::tls::server_config(&f))
    {
        problems.push(e.to_string());
    }
    let d = &config.data_dir;
    if let Some(why) = crate::store::engine_conflict(d, config.store_engine) {
        problems.push(format!("data_dir {}: {why}", d.display()));
    }
    if d.exists() && !d.is_dir() {
        problems.push(format!(
            "data_dir {}: exists and is not a folder",
            d.display()
        ));
    } else if !d.exists() {
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.exists()) {
            problems.push(format!(
                "data_dir {}: neither it nor its parent folder exists",
                d.display()
            ));
        }
    }
    problems
}

/// The loud warning for bearer tokens sent in clear text over a network:
/// without `[tls]` on a non-loopback address
/// the fix is `[tls]`, or a TLS proxy in front.
fn plaintext_warning(addr: std::net::SocketAddr, tokens: bool) -> Option<String> {
    (tokens && !addr.ip().is_loopback()).then(|| {
        format!(
            "SERVING PLAINTEXT gRPC ON {addr}: client tokens cross the network in clear text. Configure [tls] (or terminate TLS in a proxy and listen on 127.0.0.1)"
        )
    })
}

/// Takes the address `listen` names (the first it resolves to) without
/// listening yet: nobody can connect to a daemon that cannot answer.
pub async fn bind(listen: &str) -> anyhow::Result<TcpSocket> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?
        .collect();
    bind_any(listen, &addrs)
}

/// The first of `addrs` (a name's addresses, in the resolver's order)
/// that can be bound, as `TcpListener::bind` does: a name that resolves to
/// an address this host lacks (`::1` without IPv6) and one it has binds
/// the one it has. If none can, the error names each address and why.
fn bind_any(listen: &str, addrs: &[std::net::SocketAddr]) -> anyhow::Result<TcpSocket> {
    let one = |addr: std::net::SocketAddr| -> std::io::Result<TcpSocket> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }?;
        // As `TcpListener::bind` does: a restart need not wait for the old
        // connections' TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(socket)
    };
    let mut failed = Vec::new();
    for addr in addrs {
        match one(*addr) {
            Ok(socket) => return Ok(socket),
            Err(e) => failed.push(format!("{addr}: {e}")),
        }
    }
    if failed.is_empty() {
        anyhow::bail!("cannot listen on {listen}: the name resolves to no address");
    }
    anyhow::bail!("cannot listen on {listen}: {}", failed.join("; "))
}

/// Serves until `shutdown` is cancelled, then drains and returns. Listens
/// on `socket` (from [`bind`]) only once the store is open (until then a
/// connection is refused at once rather than left without an answer while
/// a large store opens), and before it resumes any job; prints the line
/// scripts wait for once it serves.
pub async fn run(
    config: Config,
    socket: TcpSocket,
    mode: Mode,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // SIGHUP first: from here on it never ends the daemon.
    let reload = crate::tls::on_sighup(config.tls.is_some());
    if config.tokens.is_empty() && !mode.insecure {
        anyhow::bail!(
            "no [[tokens]] are configured: refusing to serve an open API. Add tokens, or start with --insecure (anyone reaching the port may restore over your data) or --dev"
        );
    }
    if config.tokens.is_empty() {
        tracing::warn!("SERVING WITHOUT AUTHENTICATION (--insecure): every caller is an operator");
    }
    // Metrics: the recorder first, so that everything below is counted.
    let metrics = match &config.metrics_listen {
        Some(m) => {
            let (listener, addr) = telemetry::bind(m).await?;
            // One line that scripts and tests can wait for.
            println!("custos: metrics on {addr}");
            Some((listener, telemetry::install()?))
        }
        None => None,
    };
    let mut tokens = HashMap::new();
    for t in &config.tokens {
        let (value, caller) = client_token(&config, t)?;
        tokens.insert(value, caller);
    }
    let auth = Auth::new(tokens, mode.insecure);

    let mut entries = Vec::new();
    for b in &config.backends {
        let backend = backends::build(b, config.allow_inline_secrets)?;
        entries.push(BackendEntry::new(
            b.name.clone(),
            backend,
            b.timing(),
            config.limits.per_backend_running_jobs,
        ));
    }

    let store = Store::open_with(&config.data_dir, config.store_engine)?;
    // Listen now, before any job is resumed or schedule fired: two daemons
    // may both have bound the address (SO_REUSEADDR allows it while
    // neither listens), and the one that cannot listen must stop before it
    // drives anything. Connections wait in the backlog from here until the
    // router serves them (the resume; the store's open, the long part, is
    // done).
    let listener = socket
        .listen(1024)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let engine = Engine::new(
        store,
        entries,
        EngineSettings {
            max_running: config.limits.max_running_jobs,
            job_history: config.job_history(),
        },
        shutdown.child_token(),
    );
    let resumed = engine.resume().await?;
    if resumed > 0 {
        tracing::info!(jobs = resumed, "resumed unfinished jobs");
    }
    spawn_pruner(engine.clone(), shutdown.clone());
    if let Some((listener, handle)) = metrics {
        telemetry::serve(listener, handle, shutdown.clone());
        // The store's size, now and every minute.
        let store = engine.store().clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(n) = store.size_on_disk() {
                    telemetry::store_size(n);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    let scheduler = Scheduler::new(
        engine.clone(),
        Arc::new(SystemClock),
        shutdown.child_token(),
    )?;
    if !scheduler.is_empty() {
        tracing::info!(schedules = scheduler.len(), "loaded schedules");
    }
    tokio::spawn(scheduler.clone().run());
    tokio::spawn(scheduler.clone().run_retention());

    let (health, health_service) = tonic_health::server::health_reporter();
    api::set_serving(&health, true).await;
    // NOT_SERVING while the store cannot make writes durable (jobs could
    // not be accepted), SERVING again once it can; never after shutdown
    // began.
    {
        let mut writable = engine.store().writable();
        let health = health.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = writable.changed() => if r.is_err() { return },
                    _ = stop.cancelled() => return,
                }
                let ok = *writable.borrow_and_update();
                if stop.is_cancelled() {
                    return;
                }
                if ok {
                    tracing::info!("the store is writable again: serving");
                } else {
                    tracing::error!("the store cannot be written: health NOT_SERVING");
                }
                api::set_serving(&health, ok).await;
            }
        });
    }
    let tls = match &config.tls {
        Some(t) => {
            let tls = Tls::load(t.clone())?;
            tls.watch(reload, shutdown.clone());
            Some(tls)
        }
        None => None,
    };
    let router = api::router(
        Service::new(engine.clone(), scheduler.clone(), shutdown.clone()),
        auth,
        health_service,
    )?;

    let addr = listener.local_addr()?;
    if let Some(b) = &mode.banner {
        println!("{b}");
    }
    // One line that scripts and tests can wait for.
    println!("custos: listening on {addr}");
    if config.tls.is_none()
        && let Some(w) = plaintext_warning(addr, !config.tokens.is_empty())
    {
        tracing::warn!("{w}");
    }
    tracing::info!(%addr, data_dir = %config.data_dir.display(), backends = config.backends.len(), "custos serving");
    let stop = shutdown.clone();
    let health2 = health.clone();
    let signal = async move {
        stop.cancelled().await;
        // Tell load balancers first, then stop accepting.
        api::set_serving(&health2, false).await;
    };
    let serve = async {
        match tls {
            Some(tls) => {
                let incoming = tls.incoming(listener, shutdown.clone());
                router.serve_with_incoming_shutdown(incoming, signal).await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal)
                    .await
            }
        }
    };
    // Graceful shutdown waits for clients to close their connections; a
    // client that keeps one open (an idle channel, a watch) must not keep
    // the daemon up past the deadline.
    let deadline = config.shutdown_timeout();
    let forced = async {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        r = serve => r?,
        _ = forced => tracing::warn!("clients kept connections open past shutdown_timeout; closing them"),
    }
    tracing::info!("gRPC stopped; stopping jobs");
    engine.shutdown(config.shutdown_timeout()).await;
    tracing::info!("stopped");
    Ok(())
}

/// Prunes finished jobs at start and then hourly.
fn spawn_pruner(engine: std::sync::Arc<Engine>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        loop {
            match engine.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "pruned finished jobs past job_history"),
                Err(e) => tracing::warn!(error = %e, "pruning failed; will try again"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("shutting down (a second signal exits at once)");
        t.cancel();
        wait_signal().await;
        tracing::warn!("second signal: exiting now; unfinished jobs resume on the next start");
        std::process::exit(130);
    });
    token
}

/// After a graceful stop, once the daemon's runtime (and with it every
/// handle of the store) is gone: `store::checkpoint`, so that the next
/// start reads only what is written after this (sled; a large store's
/// checkpoint takes seconds: P4). Logged with its time; a failure is only
/// a warning (the next start reads more; nothing is lost). A signal
/// meanwhile exits at once, as a second signal does during the drain:
/// cut short, the checkpoint is a crash of an open, which sled recovers.
pub fn checkpoint_store(dir: &Path, engine: crate::store::StoreEngine) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(error = %e, "could not checkpoint the store; the next start reads its whole log");
            return;
        }
    };
    let dir = dir.to_path_buf();
    rt.block_on(async move {
        let t = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || crate::store::checkpoint(&dir, engine));
        tokio::select! {
            r = work => match r {
                Ok(Ok(true)) => tracing::info!(
                    seconds = t.elapsed().as_secs_f64(),
                    "store checkpointed: the next start reads only what is written after this"
                ),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "could not checkpoint the store; the next start reads its whole log"),
                Err(e) => tracing::warn!(error = %e, "the store's checkpoint failed; the next start reads its whole log"),
            },
            _ = wait_signal() => {
                tracing::warn!("signal during the store's checkpoint: exiting now; the next start reads the store's log");
                std::process::exit(130);
            }
        }
    });
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    /// Finding (review): `bind` tried only the first address a name
    /// resolved to, so a name whose first address this host lacks could
    /// not be listened on at all.
    #[test]
    fn bind_takes_the_first_address_that_can_be_bound() {
        // 192.0.2.1 (TEST-NET-1) is no address of this host.
        let absent: std::net::SocketAddr = "192.0.2.1:0".parse().unwrap();
        let here: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = super::bind_any("x", &[absent, here]).unwrap();
            assert!(s.local_addr().unwrap().ip().is_loopback());
            let e = super::bind_any("x", &[absent]).unwrap_err().to_string();
            assert!(e.contains("cannot listen on x: 192.0.2.1:0: "), "{e}");
            let e = super::bind_any("x", &[]).unwrap_err().to_string();
            assert!(e.contains("resolves to no address"), "{e}");
        });
    }

    #[test]
    fn plaintext_tokens_off_loopback_are_warned_about() {
        let w = |a: &str, t| super::plaintext_warning(a.parse().unwrap(), t);
        assert!(w("0.0.0.0:50051", true).unwrap().contains("clear text"));
        assert!(w("10.1.2.3:50051", true).is_some());
        assert!(w("[::]:50051", true).is_some());
        assert!(w("127.0.0.1:50051", true).is_none());
        assert!(w("[::1]:50051", true).is_none());
        assert!(
            w("0.0.0.0:50051", false).is_none(),
            "no tokens, nothing to leak"
        );
    }
}
