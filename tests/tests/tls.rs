//! TLS on the edge: `wss` with ECDSA and RSA beside plain `ws`, TLS 1.0/1.1 refused (openssl
//! really offering them), resumption on a second handshake, mutual TLS, certificate reloads while
//! a client stays connected.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use herald_core::proto::v1::{ListConnectionsRequest, list_connections_request};
use herald_tests::tls::*;
use herald_tests::*;
use rustls::HandshakeKind;
use rustls::version::{TLS12, TLS13};

fn tls_listener(cert: &Path, key: &Path, extra: toml::Table) -> toml::Table {
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), cert.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    for (k, v) in extra {
        tls.insert(k, v);
    }
    let mut l = toml::Table::new();
    l.insert("addr".into(), "127.0.0.1:0".into());
    l.insert("tls".into(), tls.into());
    l
}

fn plain_listener() -> toml::Table {
    let mut l = toml::Table::new();
    l.insert("addr".into(), "127.0.0.1:0".into());
    l
}

fn wss_url(host: &str, project: &str, query: &str) -> String {
    format!("wss://{host}/ws/{project}?{query}")
}

/// The certificate the server presents on a fresh handshake.
async fn served_cert(cfg: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr) -> Vec<u8> {
    let s = tls_connect(cfg, addr, "localhost").await.expect("tls");
    s.get_ref().1.peer_certificates().expect("server certs")[0].to_vec()
}

#[tokio::test]
async fn wss_with_ecdsa_and_rsa_beside_plain_ws() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let ec = ca.server(&["localhost", "127.0.0.1"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let rsa = ca.server(&["localhost", "127.0.0.1"], &rcgen::PKCS_RSA_SHA256);
    let (ec_crt, ec_key) = ec.write(dir.path(), "ec", &[]);
    let (rsa_crt, rsa_key) = rsa.write(dir.path(), "rsa", &[]);
    let mut herald = herald()
        .listener(plain_listener())
        .listener(tls_listener(&ec_crt, &ec_key, Default::default()))
        .listener(tls_listener(&rsa_crt, &rsa_key, Default::default()))
        .start()
        .await;
    let [plain, wss_ec, wss_rsa] = herald.listeners[..] else {
        panic!("three listeners: {:?}", herald.listeners);
    };
    herald.ws = plain;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut ws_client = herald.connect("alpha", &token("alpha", "u")).await;
    let q = format!("token={}", token("alpha", "u"));
    let mut clients = Vec::new();
    for (addr, leaf) in [(wss_ec, &ec), (wss_rsa, &rsa)] {
        for version in [&TLS13, &TLS12] {
            let cfg = client_config(ClientOpts {
                roots: &[&ca],
                versions: &[version],
                identity: None,
                alpn: &["http/1.1"],
            });
            let (c, welcome) = connect_wss(&cfg, addr, &wss_url("localhost", "alpha", &q)).await;
            assert_eq!(welcome["user"], "u");
            let (_, conn) = c.ws.get_ref().get_ref();
            assert_eq!(conn.protocol_version(), Some(version.version));
            assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
            assert_eq!(
                conn.peer_certificates().expect("certs")[0],
                leaf.der(),
                "the listener's own certificate"
            );
            clients.push(c);
        }
    }
    // A client offering only another application protocol is refused (ALPN is http/1.1).
    let h2_only = client_config(ClientOpts {
        roots: &[&ca],
        versions: &[],
        identity: None,
        alpn: &["h2"],
    });
    assert!(tls_connect(&h2_only, wss_ec, "localhost").await.is_err());

    send(&mut grpc, publish("alpha", To::User("u"), r#""hello""#)).await;
    assert_eq!(ws_client.next_msg().await["data"], "hello");
    for c in &mut clients {
        assert_eq!(c.next_msg().await["data"], "hello");
    }
}

#[tokio::test]
async fn resumption_on_a_second_handshake_tls13_and_tls12() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "srv", &[]);
    let herald = herald()
        .listener(tls_listener(&crt, &key, Default::default()))
        .start()
        .await;
    let addr = herald.listeners[0];
    let q = format!("token={}", token("alpha", "r"));
    // TLS 1.3 tickets, TLS 1.2 tickets, TLS 1.2 session ids.
    let cases: [(&str, &'static rustls::SupportedProtocolVersion, bool); 3] = [
        ("tls1.3 ticket", &TLS13, true),
        ("tls1.2 ticket", &TLS12, true),
        ("tls1.2 session id", &TLS12, false),
    ];
    for (name, version, tickets) in cases {
        let mut cfg = (*client_config(ClientOpts {
            roots: &[&ca],
            versions: &[version],
            identity: None,
            alpn: &[],
        }))
        .clone();
        cfg.resumption =
            rustls::client::Resumption::in_memory_sessions(16).tls12_resumption(if tickets {
                rustls::client::Tls12Resumption::SessionIdOrTickets
            } else {
                rustls::client::Tls12Resumption::SessionIdOnly
            });
        if !tickets {
            cfg.enable_sni = true;
        }
        let cfg = Arc::new(cfg);
        // The first connection: a full handshake, then a real session (tickets arrive after it).
        let (mut first, _) = connect_wss(&cfg, addr, &wss_url("localhost", "alpha", &q)).await;
        assert_eq!(
            first.ws.get_ref().get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full),
            "{name}: first handshake"
        );
        first
            .send_json(serde_json::json!({"type":"ping","id":1}))
            .await;
        assert_eq!(first.next_json().await["type"], "pong");
        let (second, _) = connect_wss(&cfg, addr, &wss_url("localhost", "alpha", &q)).await;
        assert_eq!(
            second.ws.get_ref().get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{name}: second handshake resumes"
        );
    }
}

/// Runs `openssl s_client` with `args` against `addr`; returns its stdout and stderr together.
async fn s_client(addr: std::net::SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("openssl not found: install the openssl package");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn openssl_old_versions_refused_and_session_id_resumed() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let (crt, key) = ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "srv", &[]);
    let herald = herald()
        .listener(tls_listener(&crt, &key, Default::default()))
        .start()
        .await;
    let addr = herald.listeners[0];
    // The client really offers TLS 1.0 / 1.1 (SECLEVEL=0 re-enables them in OpenSSL 3): the
    // server answers with a protocol_version alert.
    for v in ["-tls1", "-tls1_1"] {
        let out = s_client(addr, &[v, "-cipher", "DEFAULT@SECLEVEL=0"]).await;
        assert!(
            out.contains("alert protocol version"),
            "{v}: expected the server's protocol_version alert, got:\n{out}"
        );
    }
    for v in ["-tls1_2", "-tls1_3"] {
        let out = s_client(addr, &[v]).await;
        assert!(
            out.contains("Verify return code") && out.contains("New, TLSv1."),
            "{v}:\n{out}"
        );
    }
    // TLS 1.2 resumption by session id (tickets off on the client).
    let sess = dir.path().join("sess.pem");
    let sess = sess.to_str().expect("path");
    let first = s_client(addr, &["-tls1_2", "-no_ticket", "-sess_out", sess]).await;
    assert!(first.contains("New, TLSv1.2"), "{first}");
    let second = s_client(addr, &["-tls1_2", "-no_ticket", "-sess_in", sess]).await;
    assert!(
        second.contains("Reused, TLSv1.2"),
        "session id resumption:\n{second}"
    );
}

#[tokio::test]
async fn mutual_tls_required_and_optional() {
    let dir = tempfile::tempdir().expect("dir");
    let root = Ca::root("device root");
    let inter = root.intermediate("device issuing ca");
    let other = Ca::root("someone else");
    let server_ca = Ca::root("server root");
    let (crt, key) = server_ca
        .server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256)
        .write(dir.path(), "srv", &[]);
    // One CA file with root and intermediate, one with the intermediate alone.
    let both = dir.path().join("both.pem");
    std::fs::write(&both, format!("{}{}", root.pem(), inter.pem())).expect("write");
    let only_inter = dir.path().join("inter.pem");
    std::fs::write(&only_inter, inter.pem()).expect("write");
    let mtls = |mode: &str, ca: &Path| {
        let mut t = toml::Table::new();
        t.insert("client_auth".into(), mode.into());
        t.insert("client_ca_file".into(), ca.display().to_string().into());
        tls_listener(&crt, &key, t)
    };
    let herald = herald()
        .edge("auth_timeout_ms", 1000)
        .listener(mtls("required", &both))
        .listener(mtls("optional", &only_inter))
        .projects(
            r#"
            [[projects]]
            id = "devices"
            [[projects.keys]]
            alg = "HS256"
            secret = "devices-secret-0123456789abcdef0123456"
            [projects.client_certificates]
            groups = ["fleet"]
            channels = ["fw-*"]

            [[projects]]
            id = "alpha"
            api_keys = ["alpha-api-key-0123456789"]
            [[projects.keys]]
            alg = "HS256"
            secret = "alpha-secret-0123456789abcdef0123456789"
            "#,
        )
        .start()
        .await;
    let (required, optional) = (herald.listeners[0], herald.listeners[1]);
    let good = inter.client("sensor-17", false);
    let expired = inter.client("sensor-old", true);
    let stranger = other.client("sensor-17", false);
    let cfg = |leaf: Option<&Leaf>, chain: &[&Ca]| {
        client_config(ClientOpts {
            roots: &[&server_ca],
            versions: &[],
            identity: leaf.map(|l| (l, chain)),
            alpn: &[],
        })
    };
    let url = |project: &str, query: &str| wss_url("localhost", project, query);

    // A good chain (leaf + intermediate) on both listeners: the device is `sub` = its CN, with
    // the project's certificate groups, and no token.
    let mut devices = Vec::new();
    for addr in [required, optional] {
        let (mut c, welcome) =
            connect_wss(&cfg(Some(&good), &[&inter]), addr, &url("devices", "")).await;
        assert_eq!(welcome["user"], "sensor-17", "{welcome}");
        assert_eq!(welcome["groups"], serde_json::json!(["fleet"]));
        assert_eq!(c.subscribe(1, "fw-updates").await["type"], "ack");
        assert_eq!(c.subscribe(2, "other").await["type"], "error");
        devices.push(c);
    }
    // The leaf alone works where the CA file holds the intermediate.
    connect_wss(&cfg(Some(&good), &[]), optional, &url("devices", "")).await;
    // A project without certificate auth still wants a token from a certified client.
    let (mut c, _) = open_wss(
        &cfg(Some(&good), &[&inter]),
        required,
        &url("alpha", ""),
        &[],
    )
    .await
    .expect("upgrade");
    assert_eq!(c.expect_close().await.0, 4001);

    // A wrong CA and an expired certificate fail the handshake on both listeners.
    for (name, leaf, chain) in [
        ("wrong ca", &stranger, vec![&other]),
        ("expired", &expired, vec![&inter]),
    ] {
        for addr in [required, optional] {
            let r = open_wss(&cfg(Some(leaf), &chain), addr, &url("devices", ""), &[]).await;
            assert!(r.is_err(), "{name} on {addr}: accepted");
        }
    }
    // Without a certificate: refused where required, a token client where optional.
    let q = format!("token={}", token("alpha", "web"));
    assert!(
        open_wss(&cfg(None, &[]), required, &url("alpha", &q), &[])
            .await
            .is_err()
    );
    let (_, welcome) = connect_wss(&cfg(None, &[]), optional, &url("alpha", &q)).await;
    assert_eq!(welcome["user"], "web");

    // The certified device is listed like any other connection.
    let mut admin = herald.grpc(Some(ADMIN_KEY)).await;
    let list = admin
        .list_connections(ListConnectionsRequest {
            project: "devices".into(),
            of: Some(list_connections_request::Of::User("sensor-17".into())),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.connections.len(), 2, "{list:?}");
}

/// Waits until new handshakes see `want`.
async fn until_served(cfg: &Arc<rustls::ClientConfig>, addr: std::net::SocketAddr, want: &[u8]) {
    tokio::time::timeout(WAIT, async {
        while served_cert(cfg, addr).await != want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the new certificate served in time");
}

#[tokio::test]
async fn certificate_reload_by_rename_symlink_swap_and_sighup() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::root("test root");
    let names = ["localhost"];
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let gen0 = ca.server(&names, alg);
    // Listener 1: plain files replaced by an atomic rename.
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).expect("dir");
    let (flat_crt, flat_key) = gen0.write(&flat, "tls", &[]);
    // Listener 2: a Kubernetes Secret mount: tls.crt -> ..data/tls.crt, ..data -> ..v0.
    let k8s = dir.path().join("k8s");
    std::fs::create_dir_all(k8s.join("..v0")).expect("dir");
    gen0.write(&k8s.join("..v0"), "tls", &[]);
    std::os::unix::fs::symlink("..v0", k8s.join("..data")).expect("symlink");
    for f in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{f}"), k8s.join(f)).expect("symlink");
    }
    // Listener 3: no watching; SIGHUP reloads.
    let hup = dir.path().join("hup");
    std::fs::create_dir(&hup).expect("dir");
    let (hup_crt, hup_key) = gen0.write(&hup, "tls", &[]);
    let fast = |ms: i64| {
        let mut t = toml::Table::new();
        t.insert("watch_interval_ms".into(), ms.into());
        t
    };
    let herald = herald()
        .listener(tls_listener(&flat_crt, &flat_key, fast(200)))
        .listener(tls_listener(
            &k8s.join("tls.crt"),
            &k8s.join("tls.key"),
            fast(200),
        ))
        .listener(tls_listener(&hup_crt, &hup_key, fast(0)))
        .start()
        .await;
    let cfg = client_config(ClientOpts {
        roots: &[&ca],
        versions: &[],
        identity: None,
        alpn: &[],
    });
    let q = format!("token={}", token("alpha", "stay"));
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut live = Vec::new();
    for addr in &herald.listeners {
        live.push(
            connect_wss(&cfg, *addr, &wss_url("localhost", "alpha", &q))
                .await
                .0,
        );
        assert_eq!(served_cert(&cfg, *addr).await, gen0.der().to_vec());
    }

    // Atomic rename: written beside, renamed over.
    let gen1 = ca.server(&names, alg);
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).expect("dir");
    let (c, k) = gen1.write(&tmp, "tls", &[]);
    std::fs::rename(&k, &flat_key).expect("rename key");
    std::fs::rename(&c, &flat_crt).expect("rename cert");
    until_served(&cfg, herald.listeners[0], &gen1.der()).await;

    // Symlink swap, as the kubelet does it: a new directory, ..data re-pointed atomically.
    let gen2 = ca.server(&names, alg);
    std::fs::create_dir(k8s.join("..v1")).expect("dir");
    gen2.write(&k8s.join("..v1"), "tls", &[]);
    std::os::unix::fs::symlink("..v1", k8s.join("..data_tmp")).expect("symlink");
    std::fs::rename(k8s.join("..data_tmp"), k8s.join("..data")).expect("swap");
    std::fs::remove_dir_all(k8s.join("..v0")).expect("old version removed");
    until_served(&cfg, herald.listeners[1], &gen2.der()).await;

    // Not watched: unchanged until SIGHUP.
    let gen3 = ca.server(&names, alg);
    gen3.write(&hup, "tls", &[]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        served_cert(&cfg, herald.listeners[2]).await,
        gen0.der().to_vec()
    );
    herald.signal("HUP");
    until_served(&cfg, herald.listeners[2], &gen3.der()).await;

    // A broken file is refused (awaited: the watcher counts the failed reload); the running
    // certificate stays.
    let failed = r#"herald_edge_tls_reloads_total{result="error"}"#;
    let failed_before = herald.metric(failed).await;
    std::fs::write(&flat_crt, "not a certificate").expect("write");
    eventually(WAIT, async || match herald.metric(failed).await {
        n if n > failed_before => Ok(()),
        n => Err(format!(
            "failed tls reloads: {n}, before the broken file {failed_before}"
        )),
    })
    .await;
    assert_eq!(
        served_cert(&cfg, herald.listeners[0]).await,
        gen1.der().to_vec()
    );

    // The clients connected before every reload are still there and receive.
    send(
        &mut grpc,
        publish("alpha", To::User("stay"), r#""after reloads""#),
    )
    .await;
    for c in &mut live {
        assert_eq!(c.next_msg().await["data"], "after reloads");
    }
}
