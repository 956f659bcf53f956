//! TLS and mutual TLS on the gRPC listener, through the real CLI:
//! certificates made here with rcgen; a good CA (and client certificate)
//! works, no client certificate or another CA is refused, plaintext
//! cannot talk to a TLS port, tokens still apply over TLS.

use std::{path::Path, process::Command, time::Duration};

use custos_cf_v3::sim::SimConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::harness::*;

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate signed by `ca` for `sans`, with `usage`; (cert, key) PEM.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.extended_key_usages = vec![usage];
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// Runs `custos backends` against `endpoint` with `args`; (ok, output).
fn backends(endpoint: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .arg("backends")
        .args(args)
        .env("CUSTOS_ENDPOINT", endpoint)
        .env("CUSTOS_TOKEN", OP_TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_through_the_cli() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let ours = ca("custos test CA");
    let other = ca("someone else's CA");
    let (cert, key) = leaf(
        &ours,
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(&ours, &["ops"], ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(&other, &["x"], ExtendedKeyUsagePurpose::ClientAuth);
    let ca_file = write(dir.path(), "ca.pem", &ours.pem());
    let other_ca = write(dir.path(), "other-ca.pem", &other.pem());
    let cert_file = write(dir.path(), "server.pem", &cert);
    let key_file = write(dir.path(), "server-key.pem", &key);
    let client_cert_file = write(dir.path(), "client.pem", &client_cert);
    let client_key_file = write(dir.path(), "client-key.pem", &client_key);
    let stranger_cert_file = write(dir.path(), "stranger.pem", &stranger_cert);
    let stranger_key_file = write(dir.path(), "stranger-key.pem", &stranger_key);

    // TLS only.
    let o = Opts {
        extra: format!("[tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\n"),
        ..Default::default()
    };
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    let d = Daemon::start(&sim, &tls_dir, &o);
    let https = format!("https://{}", d.addr);
    let (ok, out) = backends(&https, &["--ca-file", &ca_file]);
    assert!(ok, "{out}");
    assert!(out.contains("backends/cf"), "{out}");
    let (ok, out) = backends(&https, &["--ca-file", &other_ca]);
    assert!(!ok, "another CA must not be trusted: {out}");
    let (ok, _) = backends(&format!("http://{}", d.addr), &[]);
    assert!(!ok, "plaintext cannot talk to a TLS listener");
    drop(d);

    // Mutual TLS.
    let o = Opts {
        extra: format!(
            "[tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{key_file}\"\nclient_ca_file = \"{ca_file}\"\n"
        ),
        ..Default::default()
    };
    let mtls_dir = dir.path().join("mtls");
    std::fs::create_dir(&mtls_dir).unwrap();
    let d = Daemon::start(&sim, &mtls_dir, &o);
    let https = format!("https://{}", d.addr);
    let (ok, out) = backends(
        &https,
        &[
            "--ca-file",
            &ca_file,
            "--cert-file",
            &client_cert_file,
            "--key-file",
            &client_key_file,
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = backends(&https, &["--ca-file", &ca_file]);
    assert!(!ok, "no client certificate: refused: {out}");
    let (ok, out) = backends(
        &https,
        &[
            "--ca-file",
            &ca_file,
            "--cert-file",
            &stranger_cert_file,
            "--key-file",
            &stranger_key_file,
        ],
    );
    assert!(!ok, "a certificate of another CA: refused: {out}");
    // Tokens still apply over TLS.
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args([
            "backends",
            "--ca-file",
            &ca_file,
            "--cert-file",
            &client_cert_file,
            "--key-file",
            &client_key_file,
        ])
        .env("CUSTOS_ENDPOINT", &https)
        .env("CUSTOS_TOKEN", "not-a-token-of-this-daemon")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    // A key file others can read is refused at start.
    let loose = dir.path().join("loose-key.pem");
    std::fs::write(&loose, &key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[tls]\ncert_file = \"{cert_file}\"\nkey_file = \"{}\"\n",
            loose.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_custos"))
        .args(["config", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("readable by others"));
}

/// `custos backends` over mTLS trusting `ca` and presenting `client`.
fn mtls_ok(endpoint: &str, ca: &str, client: &(String, String)) -> bool {
    backends(
        endpoint,
        &[
            "--ca-file",
            ca,
            "--cert-file",
            &client.0,
            "--key-file",
            &client.1,
        ],
    )
    .0
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, limit: std::time::Duration, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A renewed certificate and client CA are served without a restart: on
/// SIGHUP, and when the files change; a broken file keeps the previous
/// certificates in use and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_on_sighup_and_on_change() {
    let sim = sim(SimConfig::default(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // Generation n: a CA, the server's certificate and a client's, in files.
    let generation = |n: u32| {
        let ca = ca(&format!("custos CA {n}"));
        let (cert, key) = leaf(
            &ca,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (cc, ck) = leaf(&ca, &["ops"], ExtendedKeyUsagePurpose::ClientAuth);
        let ca_copy = write(p, &format!("ca{n}.pem"), &ca.pem());
        let client = (
            write(p, &format!("client{n}.pem"), &cc),
            write(p, &format!("client{n}-key.pem"), &ck),
        );
        (ca.pem(), cert, key, ca_copy, client)
    };
    let install = |ca: &str, cert: &str, key: &str| {
        // Key first: a look between the two writes sees a pair that does
        // not match, which must only delay the reload.
        write(p, "server-key.pem", key);
        write(p, "server.pem", cert);
        write(p, "clients-ca.pem", ca);
    };
    let (ca1, cert1, key1, ca1_file, client1) = generation(1);
    install(&ca1, &cert1, &key1);
    let o = Opts {
        extra: format!(
            "metrics_listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server-key.pem\"\nclient_ca_file = \"{d}/clients-ca.pem\"\n",
            d = p.display()
        ),
        ..Default::default()
    };
    let data = p.join("daemon");
    std::fs::create_dir(&data).unwrap();
    let d = Daemon::start(&sim, &data, &o);
    let https = format!("https://{}", d.addr);
    let hup = || d.signal("HUP");
    assert!(mtls_ok(&https, &ca1_file, &client1));

    // Renewed (a new CA for both sides), then SIGHUP.
    let (ca2, cert2, key2, ca2_file, client2) = generation(2);
    assert!(!mtls_ok(&https, &ca2_file, &client2), "not yet");
    install(&ca2, &cert2, &key2);
    hup();
    eventually("generation 2 served", Duration::from_secs(15), || {
        mtls_ok(&https, &ca2_file, &client2)
    });
    assert!(
        !mtls_ok(&https, &ca1_file, &client1),
        "the old CA and client certificate are no longer accepted"
    );

    // A broken certificate: the previous one stays in use.
    write(p, "server.pem", "-----BEGIN CERTIFICATE-----\nbroken\n");
    hup();
    eventually("the failed reload logged", Duration::from_secs(15), || {
        d.logs().contains("TLS reload failed")
    });
    assert!(mtls_ok(&https, &ca2_file, &client2), "still serving");

    // Changed files, no signal: picked up by the daemon looking at them.
    let (ca3, cert3, key3, ca3_file, client3) = generation(3);
    install(&ca3, &cert3, &key3);
    eventually("generation 3 served", Duration::from_secs(30), || {
        mtls_ok(&https, &ca3_file, &client3)
    });

    let text = reqwest::get(format!("http://{}/metrics", d.metrics_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "custos_tls_reloads_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(count("ok") >= 2.0, "{text}");
    assert!(count("error") >= 1.0, "{text}");
}
