//! TLS on the gRPC listener: a rustls configuration built from `[tls]`,
//! replaced in place on SIGHUP or when one of its files changes, and the
//! accept loop that hands tonic finished handshakes.
//!
//! Each connection takes the configuration current when it is accepted, so
//! a renewed certificate (or client CA) applies to new connections at once
//! and open ones are left alone. A reload that fails (a half-written file,
//! a key that does not match the certificate) keeps the configuration in
//! use and says why; the next change of a file tries again.

use std::{
    io,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    config::{TlsConfig, TlsFiles},
    telemetry,
};

/// How often the files are looked at for changes.
const POLL: Duration = Duration::from_secs(5);

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rustls server configuration for `files`: the certificate chain and
/// its key (which must match), HTTP/2 by ALPN, and with a client CA,
/// client certificates required.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates("tls.cert_file", &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(files.key.expose().as_bytes()).map_err(|e| {
        anyhow::anyhow!("tls.key_file: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}")
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates("tls.client_ca_file", ca)? {
                roots.add(c).map_err(|e| {
                    anyhow::anyhow!("tls.client_ca_file: a certificate cannot be used as a CA: {e}")
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        anyhow::anyhow!("tls.cert_file and tls.key_file do not make a usable pair: {e}")
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn certificates(key: &str, pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{key}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)");
    }
    Ok(certs)
}

/// What is known of a file without reading it: a change of any of these
/// (a rewrite, a renamed-over file, a swapped symlink) means a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    fn of(paths: &[PathBuf]) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp(
            paths
                .iter()
                .map(|p| {
                    let m = std::fs::metadata(p).ok()?;
                    Some((m.modified().ok()?, m.len(), m.ino()))
                })
                .collect(),
        )
    }
}

/// The listener's TLS: the configuration in use and where it came from.
pub struct Tls {
    source: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// The files as they were at the last (tried) load.
    seen: Mutex<Stamp>,
}

impl Tls {
    /// Reads `[tls]`; fails (the daemon does not start) if it is unusable.
    pub fn load(source: TlsConfig) -> anyhow::Result<Arc<Tls>> {
        let seen = Stamp::of(&paths(&source));
        let config = server_config(&source.read()?)?;
        Ok(Arc::new(Tls {
            source,
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(seen),
        }))
    }

    fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the files again and, if they make a usable configuration,
    /// serves new connections with it; otherwise keeps the one in use.
    pub fn reload(&self, why: &str) -> anyhow::Result<()> {
        *lock(&self.seen) = Stamp::of(&paths(&self.source));
        let r = self
            .source
            .read()
            .map_err(anyhow::Error::from)
            .and_then(|f| server_config(&f));
        match r {
            Ok(config) => {
                match self.current.write() {
                    Ok(mut g) => *g = Arc::new(config),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
                }
                telemetry::tls_reload(true);
                tracing::info!(trigger = why, "TLS certificates reloaded");
                Ok(())
            }
            Err(e) => {
                telemetry::tls_reload(false);
                tracing::error!(trigger = why, error = %e, "TLS reload failed; still serving the previous certificates");
                Err(e)
            }
        }
    }

    /// Whether a file changed since the last load.
    fn changed(&self) -> bool {
        *lock(&self.seen) != Stamp::of(&paths(&self.source))
    }

    /// Reloads when `reload` is notified (SIGHUP, see [`on_sighup`]), and
    /// when a file changes (looked at every few seconds), until `stop`.
    pub fn watch(self: &Arc<Self>, reload: Arc<Notify>, stop: CancellationToken) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = reload.notified() => "SIGHUP",
                    _ = tick.tick() => {
                        if !tls.changed() { continue }
                        "file changed"
                    }
                };
                let _ = tls.reload(why);
            }
        });
    }

    /// Accepts TCP connections on `listener` until `stop`, and yields those
    /// that complete a TLS handshake. Handshakes run in their own tasks, so
    /// a slow or silent client holds up no one.
    pub fn incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Takes SIGHUP over (its default action would end the daemon with no
/// drain) for as long as the process lives, and notifies the returned
/// `Notify` at each one: `[tls]` reloads its files, and without `[tls]` the
/// signal is only logged. Installed by `main` before the daemon says it
/// listens, and first thing in `server::run`.
pub fn on_sighup(tls_configured: bool) -> Arc<Notify> {
    // Once per process: `main` calls it before it says it listens, and
    // `server::run` again (tests run the server without `main`).
    static RELOAD: std::sync::OnceLock<Arc<Notify>> = std::sync::OnceLock::new();
    let mut fresh = false;
    let reload = RELOAD
        .get_or_init(|| {
            fresh = true;
            Arc::new(Notify::new())
        })
        .clone();
    if !fresh {
        return reload;
    }
    let r = reload.clone();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    if tls_configured {
                        r.notify_one();
                    } else {
                        tracing::info!(
                            "SIGHUP: nothing to reload (SIGHUP reloads the [tls] certificates; there is no [tls])"
                        );
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still watched")
        }
    }
    reload
}

fn paths(t: &TlsConfig) -> Vec<PathBuf> {
    let mut p = vec![t.cert_file.clone(), t.key_file.clone()];
    p.extend(t.client_ca_file.clone());
    p
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
