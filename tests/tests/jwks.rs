//! JWK Set URLs (`[projects.jwks]`): a local HTTPS issuer (its CA made with rcgen, the project
//! configured with that CA) that rotates its keys. A token of the first key works; after the
//! rotation a token of the new key is accepted after the refresh its unknown `kid` asks for;
//! with the issuer down the last good set is still used; `Cache-Control: max-age` decides when
//! the set is fetched again (the issuer counts its fetches). The same through the admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use herald_tests::tls::{Ca, Leaf, provider};
use herald_tests::*;
use jsonwebtoken::jwk::Jwk;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// A JWK Set server over HTTPS: answers every `GET` with the set and `Cache-Control` of the
/// moment, and counts the fetches.
struct Issuer {
    addr: SocketAddr,
    fetches: Arc<AtomicU64>,
    state: Arc<Mutex<(Value, String)>>,
    task: tokio::task::JoinHandle<()>,
}

impl Issuer {
    async fn start(leaf: &Leaf, ca: &Ca, set: Value, cache_control: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (certs, key) = leaf.identity(&[ca]);
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let fetches = Arc::new(AtomicU64::new(0));
        let state = Arc::new(Mutex::new((set, cache_control.to_string())));
        let (f, s) = (fetches.clone(), state.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, f, s) = (acceptor.clone(), f.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut tls = BufReader::new(tls);
                    let mut first = String::new();
                    if tls.read_line(&mut first).await.is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        match tls.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let (body, cc) = {
                        let st = s.lock().expect("state");
                        (st.0.to_string(), st.1.clone())
                    };
                    if first.starts_with("GET /jwks.json ") {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: {cc}\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let mut tls = tls.into_inner();
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            fetches,
            state,
            task,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/jwks.json", self.addr)
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }

    fn serve(&self, set: Value, cache_control: &str) {
        *self.state.lock().expect("state") = (set, cache_control.to_string());
    }

    /// Stops listening: fetches fail with a refused connection.
    fn stop(&self) {
        self.task.abort();
    }
}

/// The public JWK of a test key pair (`es256`, `eddsa`) under `kid`.
fn jwk(alg: &str, kid: &str) -> Value {
    let pem = std::fs::read(keys_dir().join(format!("{alg}-private.pem"))).expect("key");
    let (key, a) = match alg {
        "es256" => (
            jsonwebtoken::EncodingKey::from_ec_pem(&pem),
            jsonwebtoken::Algorithm::ES256,
        ),
        "eddsa" => (
            jsonwebtoken::EncodingKey::from_ed_pem(&pem),
            jsonwebtoken::Algorithm::EdDSA,
        ),
        _ => panic!("no such test key {alg}"),
    };
    let mut jwk = Jwk::from_encoding_key(&key.expect("pem"), a).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).expect("json")
}

/// Connects to `project` with `token`: the welcomed client, or the close code of the refusal.
async fn connect(herald: &Herald, project: &str, token: &str) -> Result<Client, u16> {
    let (ws, _) = herald
        .open(&herald.url(project, &format!("token={token}")), &[])
        .await
        .expect("websocket upgrade");
    let mut c = Client { ws };
    loop {
        let m = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("an answer in time");
        match m {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_eq!(v["type"], "welcome", "{v}");
                return Ok(c);
            }
            Some(Ok(Message::Close(f))) => return Err(f.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            other => panic!("neither a welcome nor a close: {other:?}"),
        }
    }
}

/// A test PKI: the issuer's CA (written to `dir/ca.pem`) and its certificate for 127.0.0.1.
fn pki(dir: &std::path::Path) -> (Ca, Leaf, std::path::PathBuf) {
    let ca = Ca::root("jwks test ca");
    let leaf = ca.server(&["127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).expect("write ca");
    // Both parse: what the server presents is what the CA file verifies.
    assert!(CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).is_ok());
    assert!(PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).is_ok());
    (ca, leaf, path)
}

/// The longer of the project's refresh floor (1 s) and the margin a loaded machine needs.
const PAST_MIN_REFRESH: Duration = Duration::from_millis(1_300);

#[tokio::test]
async fn a_rotated_key_is_fetched_on_its_unknown_kid_and_the_last_good_set_outlives_the_issuer() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, leaf, ca_file) = pki(dir.path());
    let issuer = Issuer::start(
        &leaf,
        &ca,
        json!({"keys": [jwk("es256", "k1")]}),
        "public, max-age=3600",
    )
    .await;
    let herald = herald()
        .projects(&format!(
            r#"
            [[projects]]
            id = "jw"
            api_keys = ["jw-api-key-0123456789abc"]
            [projects.jwks]
            url = "{}"
            ca_file = "{}"
            min_refresh_secs = 1
            timeout_ms = 1000
            "#,
            issuer.url(),
            ca_file.display()
        ))
        .start()
        .await;
    let t = |alg: &str, kid: &str, sub: &str| signed(alg, kid, &claims("jw", sub));

    // Key 1 works (at once, or after the first fetch it waits for).
    connect(&herald, "jw", &t("es256", "k1", "alice"))
        .await
        .expect("a token of key 1");
    eventually_eq(WAIT, 1, async || issuer.fetches()).await;

    // The issuer rotates to key 2: a token of key 2 asks for a refresh, waits for it, and is in.
    issuer.serve(
        json!({"keys": [jwk("eddsa", "k2")]}),
        "public, max-age=3600",
    );
    tokio::time::sleep(PAST_MIN_REFRESH).await;
    let asked = Instant::now();
    connect(&herald, "jw", &t("eddsa", "k2", "bob"))
        .await
        .expect("a token of key 2, after the refresh on its unknown kid");
    eprintln!("token of a rotated key accepted in {:?}", asked.elapsed());
    assert_eq!(issuer.fetches(), 2, "one refresh for the unknown kid");
    // Key 1 left the set: its tokens are refused now.
    assert_eq!(
        connect(&herald, "jw", &t("es256", "k1", "alice"))
            .await
            .err(),
        Some(4002)
    );

    // Unknown kids in a burst: at most one fetch per min_refresh_secs.
    let before = issuer.fetches();
    let tokens: Vec<String> = (0..5)
        .map(|i| t("es256", &format!("x{i}"), "eve"))
        .collect();
    let burst = futures_util::future::join_all(tokens.iter().map(|tk| connect(&herald, "jw", tk)));
    for r in burst.await {
        assert_eq!(r.err(), Some(4002));
    }
    assert!(
        issuer.fetches() - before <= 2,
        "a burst of unknown kids fetched {} times",
        issuer.fetches() - before
    );

    // The issuer goes down: the last good set is still used, an unknown kid is refused within
    // the fetch deadline.
    issuer.stop();
    tokio::time::sleep(PAST_MIN_REFRESH).await;
    let asked = Instant::now();
    assert_eq!(
        connect(&herald, "jw", &t("es256", "k9", "eve")).await.err(),
        Some(4002)
    );
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "an unknown kid waited {took:?}"
    );
    eventually(WAIT, async || {
        match herald
            .metric(r#"herald_edge_jwks_fetches_total{result="error"}"#)
            .await
        {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("failed fetches counted: {n}")),
        }
    })
    .await;
    connect(&herald, "jw", &t("eddsa", "k2", "bob"))
        .await
        .expect("the last good set outlives its issuer");
}

#[tokio::test]
async fn cache_control_decides_when_the_set_is_fetched_again_and_the_api_sets_a_source() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, leaf, _) = pki(dir.path());
    let issuer = Issuer::start(
        &leaf,
        &ca,
        json!({"keys": [jwk("es256", "k1")]}),
        "max-age=1",
    )
    .await;
    let herald = herald().router("http_listen", "127.0.0.1:0").start().await;

    // A project made through the admin API trusts the issuer (its CA as PEM text).
    let body = json!({"project": "jwapi", "jwks": {"url": issuer.url(), "ca_pem": ca.pem(),
                      "min_refresh_secs": 1, "timeout_ms": 1000}});
    let r = http_request(
        herald.http,
        "POST",
        "/v1/admin/projects/create",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {ADMIN_KEY}")),
        ],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["project"]["jwks"]["url"], issuer.url().as_str());
    assert_eq!(v["project"]["jwks"]["custom_ca"], true);
    assert!(!r.body.contains("BEGIN CERTIFICATE"), "the CA is not shown");
    let t = |alg: &str, kid: &str| signed(alg, kid, &claims("jwapi", "carol"));
    connect(&herald, "jwapi", &t("es256", "k1"))
        .await
        .expect("a token of the API project's JWKS key");

    // max-age=1: fetched again about every second, without any client asking.
    let started = Instant::now();
    let at_start = issuer.fetches();
    eventually(WAIT, async || match issuer.fetches() - at_start {
        n if n >= 3 => Ok(()),
        n => Err(format!("{n} fetches since")),
    })
    .await;
    let per_sec = (issuer.fetches() - at_start) as f64 / started.elapsed().as_secs_f64();
    assert!(per_sec <= 1.5, "{per_sec:.2} fetches/s with max-age=1");
    eprintln!("max-age=1: {per_sec:.2} fetches/s");

    // The issuer rotates and says max-age=3600: the scheduled fetch takes the new key, then the
    // set is kept.
    issuer.serve(json!({"keys": [jwk("eddsa", "k2")]}), "max-age=3600");
    let at_change = issuer.fetches();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = issuer.fetches();
    assert!(
        settled - at_change <= 2,
        "{} fetches after max-age=3600",
        settled - at_change
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(issuer.fetches(), settled, "max-age=3600 is honoured");
    connect(&herald, "jwapi", &t("eddsa", "k2"))
        .await
        .expect("the rotated key, from the scheduled fetch");
    assert_eq!(issuer.fetches(), settled, "no refresh was needed for it");
}
