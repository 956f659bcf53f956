//! TLS and mutual TLS on the gRPC listener, through the real CLI:
//! certificates made here with rcgen; a good CA (and client certificate)
//! works, no client certificate or another CA is refused, plaintext
//! cannot talk to a TLS port, tokens still apply over TLS.

use std::{path::Path, process::Command};

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
