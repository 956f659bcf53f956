//! The Keystone client against the Keystone simulator, with a protected
//! endpoint that refuses bad tokens the way Keystone middleware or an API
//! gateway does.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use custos_adapter_core::{ErrorKind, Secret, http};
use custos_openstack::{Credentials, Keystone, KeystoneAuth, sim::KeystoneSim};
use serde_json::json;

const PROJECT: &str = "f841e01fd2b14e7fa41b6ae7aa6b0594";

#[derive(Clone)]
struct App {
    ks: KeystoneSim,
    /// Refuse like an API gateway (`APIGW.0301`) instead of Keystone.
    gateway: Arc<AtomicBool>,
}

async fn protected(State(a): State<App>, h: HeaderMap) -> Response {
    if a.ks.check(&h) {
        return (StatusCode::OK, Json(json!({"ok": true}))).into_response();
    }
    if a.gateway.load(Ordering::SeqCst) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"error_msg": "Incorrect IAM authentication information: decrypt token fail",
                        "error_code": "APIGW.0301", "request_id": "r-1"}),
            ),
        )
            .into_response();
    }
    custos_openstack::sim::unauthorized("The request you have made requires authentication.")
}

async fn start() -> (String, App) {
    let ks = KeystoneSim::new(PROJECT);
    ks.add_user("backup-bot", "acme", "pw-1");
    ks.add_application_credential("ac-1", "ac-secret");
    let app = App {
        ks: ks.clone(),
        gateway: Arc::new(AtomicBool::new(false)),
    };
    let router = Router::new()
        .route("/protected", get(protected))
        .with_state(app.clone())
        .merge(ks.router());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, router).await });
    (url, app)
}

fn client(url: &str, c: Credentials) -> Keystone {
    Keystone::new(
        KeystoneAuth::Keystone {
            auth_url: format!("{url}/v3"),
            credentials: c,
        },
        PROJECT,
        http::client(Duration::from_secs(5)).unwrap(),
    )
    .unwrap()
}

fn password(pw: &str) -> Credentials {
    Credentials::Password {
        user_name: "backup-bot".into(),
        user_domain_name: "acme".into(),
        password: Secret::new(pw),
    }
}

async fn call(k: &Keystone, url: &str) -> u16 {
    let c = reqwest::Client::new();
    let u = format!("{url}/protected");
    k.send("reading", true, || c.get(&u))
        .await
        .unwrap()
        .status
        .as_u16()
}

#[tokio::test]
async fn password_and_application_credential_tokens_are_cached() {
    let (url, app) = start().await;
    let k = client(&url, password("pw-1"));
    for _ in 0..3 {
        assert_eq!(call(&k, &url).await, 200);
    }
    assert_eq!(app.ks.grants(), 1, "one token for three calls");
    let a = client(
        &url,
        Credentials::ApplicationCredential {
            id: "ac-1".into(),
            secret: Secret::new("ac-secret"),
        },
    );
    assert_eq!(call(&a, &url).await, 200);
    assert_eq!(app.ks.grants(), 2);
}

#[tokio::test]
async fn wrong_credentials_are_unauthorized_and_say_so() {
    let (url, _app) = start().await;
    let k = client(&url, password("wrong"));
    let e = k.token().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert!(e.message.contains("Keystone refused"), "{}", e.message);
    assert!(
        !format!("{k:?} {e:?}").contains("wrong"),
        "no secret in Debug"
    );
}

#[tokio::test]
async fn tokens_are_refreshed_before_expiry_and_after_a_401() {
    let (url, app) = start().await;
    app.ks.set_token_lifetime(Duration::from_secs(2));
    let k = client(&url, password("pw-1"));
    assert_eq!(call(&k, &url).await, 200);
    // Refreshed at ~80 % of the life, before the token expires.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(call(&k, &url).await, 200);
    assert_eq!(app.ks.grants(), 2);
    assert_eq!(app.ks.rejected(), 0, "never sent an expired token");

    // Revoked behind our back: Keystone's 401, then the gateway's.
    app.ks.set_token_lifetime(Duration::from_secs(3600));
    for gateway in [false, true] {
        app.gateway.store(gateway, Ordering::SeqCst);
        app.ks.revoke_all();
        let before = app.ks.grants();
        assert_eq!(call(&k, &url).await, 200, "gateway={gateway}");
        assert_eq!(app.ks.grants(), before + 1);
    }
}

#[tokio::test]
async fn a_token_for_another_project_is_refused() {
    let (url, _app) = start().await;
    let k = Keystone::new(
        KeystoneAuth::Keystone {
            auth_url: format!("{url}/v3"),
            credentials: Credentials::ApplicationCredential {
                id: "ac-1".into(),
                secret: Secret::new("ac-secret"),
            },
        },
        "another-project",
        http::client(Duration::from_secs(5)).unwrap(),
    )
    .unwrap();
    let e = k.token().await.unwrap_err();
    assert!(e.message.contains("another-project"), "{}", e.message);
}

#[tokio::test]
async fn a_fixed_token_is_sent_as_is() {
    let (url, app) = start().await;
    app.ks.add_static_token("fixed-token-1");
    let k = Keystone::new(
        KeystoneAuth::Fixed(Secret::new("fixed-token-1")),
        PROJECT,
        http::client(Duration::from_secs(5)).unwrap(),
    )
    .unwrap();
    assert_eq!(call(&k, &url).await, 200);
    assert_eq!(app.ks.grants(), 0);
}
