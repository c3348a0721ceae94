//! TLS on the router's gRPC listener (`router.tls_cert`, `tls_key`, `tls_client_ca`): clients
//! connect with `https://` trusting the CA (the CLI with `--ca-file`); plaintext and untrusted
//! clients are refused without harm to the others; with a client CA only clients holding a
//! certificate it signed get through (mutual TLS). Certificates are made with rcgen.

use std::path::Path;
use std::process::Output;

use herald_core::proto::channel::RouterAddr;
use herald_tests::tls::Ca;
use herald_tests::*;

const ALPHA_KEY: &str = "alpha-api-key-0123456789";

/// Publishes to alice through `addr`; the error's text when the call or connection fails.
async fn publish_via(addr: &RouterAddr, n: u32) -> Result<(), String> {
    let channel = tokio::time::timeout(WAIT, addr.connect())
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut grpc = grpc_over(channel, Some(ALPHA_KEY));
    tokio::time::timeout(
        WAIT,
        grpc.publish(publish(
            "alpha",
            To::User("alice"),
            &format!(r#"{{"n":{n}}}"#),
        )),
    )
    .await
    .map_err(|_| "publish timed out".to_string())?
    .map(|_| ())
    .map_err(|s| format!("publish: {s}"))
}

fn https(herald: &Herald, dir: &Path, ca_file: &str) -> RouterAddr {
    RouterAddr {
        url: format!("https://{}", herald.grpc),
        ca_file: Some(dir.join(ca_file)),
        server_name: Some("localhost".into()),
        ..Default::default()
    }
}

async fn cli(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(herald_bin())
        .args(args)
        .env("HERALD_API_KEY", ALPHA_KEY)
        .env_remove("HERALD_ROUTER")
        .env_remove("HERALD_CA_FILE")
        .output();
    tokio::time::timeout(WAIT, run)
        .await
        .expect("cli in time")
        .expect("run herald")
}

#[tokio::test]
async fn the_grpc_listener_speaks_tls_to_clients_trusting_its_ca() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("router test ca");
    let (cert, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "router", &[]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
    let other = Ca::root("another ca");
    std::fs::write(dir.path().join("other.pem"), other.pem()).expect("write ca");
    let herald = herald()
        .router("tls_cert", cert.display().to_string())
        .router("tls_key", key.display().to_string())
        .start()
        .await;
    let mut alice = herald.connect("alpha", &token("alpha", "alice")).await;

    publish_via(&https(&herald, dir.path(), "ca.pem"), 1)
        .await
        .expect("publish over TLS");
    assert_eq!(alice.next_msg().await["data"]["n"], 1);

    // Refused: a plaintext client, a client trusting another CA, a client expecting another
    // name. None of them harms the listener.
    let plain = RouterAddr {
        url: format!("http://{}", herald.grpc),
        ..Default::default()
    };
    assert!(publish_via(&plain, 0).await.is_err(), "plaintext refused");
    let untrusting = https(&herald, dir.path(), "other.pem");
    assert!(
        publish_via(&untrusting, 0).await.is_err(),
        "an unknown CA refused"
    );
    let mut wrong_name = https(&herald, dir.path(), "ca.pem");
    wrong_name.server_name = Some("elsewhere.example".into());
    assert!(
        publish_via(&wrong_name, 0).await.is_err(),
        "another name refused"
    );
    // https without a CA is refused by the client itself, naming what is missing.
    let no_ca = RouterAddr {
        url: format!("https://{}", herald.grpc),
        ..Default::default()
    };
    let e = publish_via(&no_ca, 0).await.expect_err("no CA");
    assert!(e.contains("--ca-file"), "{e}");

    publish_via(&https(&herald, dir.path(), "ca.pem"), 2)
        .await
        .expect("the listener still serves");
    assert_eq!(alice.next_msg().await["data"]["n"], 2);

    // The CLI, with the CA and the name.
    let router = format!("https://{}", herald.grpc);
    let ca_file = dir.path().join("ca.pem").display().to_string();
    let out = cli(&[
        "publish",
        "--router",
        &router,
        "--ca-file",
        &ca_file,
        "--tls-server-name",
        "localhost",
        "-p",
        "alpha",
        "--user",
        "alice",
        r#"{"n":3}"#,
    ])
    .await;
    assert!(
        out.status.success(),
        "cli over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(alice.next_msg().await["data"]["n"], 3);
    let out = cli(&["count", "--router", &router, "-p", "alpha"]).await;
    assert!(!out.status.success(), "https without --ca-file fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca-file"), "{err}");
}

#[tokio::test]
async fn with_a_client_ca_only_clients_holding_its_certificates_get_through() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("router test ca");
    let (cert, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "router", &[]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
    let clients = Ca::root("publishers ca");
    std::fs::write(dir.path().join("clients.pem"), clients.pem()).expect("write ca");
    let (good_crt, good_key) =
        clients
            .client("billing-service", false)
            .write(dir.path(), "good", &[]);
    let stranger = Ca::root("stranger ca");
    let (bad_crt, bad_key) =
        stranger
            .client("billing-service", false)
            .write(dir.path(), "bad", &[]);
    let herald = herald()
        .router("tls_cert", cert.display().to_string())
        .router("tls_key", key.display().to_string())
        .router(
            "tls_client_ca",
            dir.path().join("clients.pem").display().to_string(),
        )
        .start()
        .await;
    let mut alice = herald.connect("alpha", &token("alpha", "alice")).await;

    let anonymous = https(&herald, dir.path(), "ca.pem");
    assert!(
        publish_via(&anonymous, 0).await.is_err(),
        "no client certificate refused"
    );
    let mut strange = https(&herald, dir.path(), "ca.pem");
    strange.cert_file = Some(bad_crt);
    strange.key_file = Some(bad_key);
    assert!(
        publish_via(&strange, 0).await.is_err(),
        "a certificate of another CA refused"
    );
    let mut known = https(&herald, dir.path(), "ca.pem");
    known.cert_file = Some(good_crt.clone());
    known.key_file = Some(good_key.clone());
    publish_via(&known, 1).await.expect("a known client");
    assert_eq!(alice.next_msg().await["data"]["n"], 1);

    // The CLI with its certificate.
    let router = format!("https://{}", herald.grpc);
    let out = cli(&[
        "publish",
        "--router",
        &router,
        "--ca-file",
        &dir.path().join("ca.pem").display().to_string(),
        "--tls-server-name",
        "localhost",
        "--client-cert",
        &good_crt.display().to_string(),
        "--client-key",
        &good_key.display().to_string(),
        "-p",
        "alpha",
        "--user",
        "alice",
        r#"{"n":2}"#,
    ])
    .await;
    assert!(
        out.status.success(),
        "cli with a client certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(alice.next_msg().await["data"]["n"], 2);
}

#[tokio::test]
async fn half_a_tls_setting_or_a_bad_file_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("router test ca");
    let (cert, _) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "router", &[]);
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").expect("write");
    let cases = [
        (
            format!("[router]\ntls_cert = {:?}\n", cert.display().to_string()),
            "router.tls_key",
        ),
        (
            format!(
                "[router]\ntls_cert = {:?}\ntls_key = {:?}\n",
                cert.display().to_string(),
                dir.path().join("missing.key").display().to_string()
            ),
            "router.tls_key",
        ),
        (
            format!(
                "[router]\ntls_cert = {:?}\ntls_key = {:?}\n",
                cert.display().to_string(),
                garbage.display().to_string()
            ),
            "tls",
        ),
    ];
    for (config, named) in cases {
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, &config).expect("write config");
        let run = tokio::process::Command::new(herald_bin())
            .args(["serve", "--config"])
            .arg(&path)
            .args([
                "--ws-listen",
                "127.0.0.1:0",
                "--grpc-listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .output();
        let out = tokio::time::timeout(WAIT, run)
            .await
            .expect("refused in time")
            .expect("run herald");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{config}: started");
        assert!(err.contains(named), "{config}: {err}");
    }
}
