//! The edge's defences through real sockets: each is triggered and answered with its documented
//! HTTP status or close code, counted in its metric, while an unrelated client keeps receiving.
//! Clients take distinct loopback source addresses (127.0.0.x) to be distinct client addresses.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use herald_tests::*;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

/// A TCP connection to the edge from the loopback address `127.0.0.{last}`, or from `::1`
/// when `last` is 0 (the edge then listens on `[::]`).
async fn tcp_from(herald: &Herald, last: u8) -> std::io::Result<TcpStream> {
    let port = herald.ws.port();
    if last == 0 {
        return TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).await;
    }
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))?;
    sock.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}

/// Opens a WebSocket from `127.0.0.{last}` with extra headers.
async fn open_from(
    herald: &Herald,
    last: u8,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            v.parse().expect("header value"),
        );
    }
    let tcp = tcp_from(herald, last)
        .await
        .map_err(tungstenite::Error::Io)?;
    tokio_tungstenite::client_async(req, tcp).await
}

fn url(herald: &Herald, project: &str, sub: &str) -> String {
    herald.url(project, &format!("token={}", token(project, sub)))
}

/// Connects from `127.0.0.{last}` and waits for the welcome frame.
async fn welcomed_from(herald: &Herald, last: u8, project: &str, sub: &str) -> Client {
    welcomed_with(herald, last, &url(herald, project, sub), &[]).await
}

async fn welcomed_with(herald: &Herald, last: u8, url: &str, headers: &[(&str, &str)]) -> Client {
    let (ws, _) = open_from(herald, last, url, headers)
        .await
        .expect("websocket upgrade");
    let mut c = Client { ws };
    let w = c.next_json().await;
    assert_eq!(w["type"], "welcome", "first frame: {w}");
    c
}

/// Expects the upgrade to be refused with an HTTP status; returns it and `Retry-After`.
async fn refused(
    herald: &Herald,
    last: u8,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    match open_from(herald, last, url, headers).await {
        Err(tungstenite::Error::Http(resp)) => (
            resp.status().as_u16(),
            resp.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// Publishes a broadcast to `project` and checks `c` receives it.
async fn still_receives(herald: &Herald, key: &str, project: &str, c: &mut Client, n: u64) {
    let mut grpc = herald.grpc(Some(key)).await;
    send(&mut grpc, publish(project, To::Broadcast, &n.to_string())).await;
    assert_eq!(
        c.next_msg().await["data"],
        n,
        "the unrelated client receives"
    );
}

fn table(t: toml::Table) -> toml::Value {
    toml::Value::Table(t)
}

/// The sandbox's projects alpha and beta, each with `[projects.limits]` of its own (TOML lines).
fn projects_with_limits(alpha: &str, beta: &str) -> String {
    let project = |id: &str, key: &str, secret: &str, limits: &str| {
        let limits = if limits.trim().is_empty() {
            String::new()
        } else {
            format!("[projects.limits]\n{limits}\n")
        };
        format!(
            "[[projects]]\nid = \"{id}\"\napi_keys = [\"{key}\"]\n\
             [[projects.keys]]\nalg = \"HS256\"\nsecret = \"{secret}\"\n{limits}\n"
        )
    };
    project("alpha", ALPHA_KEY, ALPHA_SECRET, alpha) + &project("beta", BETA_KEY, BETA_SECRET, beta)
}

#[tokio::test]
async fn address_lists_refuse_with_403_and_reload_on_sighup() {
    let mut herald = herald()
        .edge(
            "limits",
            table(toml::toml! {
                deny_ips = ["127.0.0.2/32", "2001:db8::/32"]
            }),
        )
        .projects(&projects_with_limits(
            "",
            r#"
            allow_ips = ["127.0.0.0/30", "::1/128"]
            deny_ips = ["127.0.0.3/32"]
            "#,
        ))
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;

    // Denied by the edge: refused at accept, for every project.
    let (status, retry) = refused(&herald, 2, &url(&herald, "alpha", "x"), &[]).await;
    assert_eq!((status, retry), (403, None));
    // Beta allows 127.0.0.0/30 but denies 127.0.0.3 (deny wins), and nothing outside.
    assert_eq!(
        refused(&herald, 3, &url(&herald, "beta", "x"), &[]).await.0,
        403
    );
    assert_eq!(
        refused(&herald, 9, &url(&herald, "beta", "x"), &[]).await.0,
        403
    );
    welcomed_from(&herald, 1, "beta", "in-range").await;
    // Alpha has no list of its own.
    welcomed_from(&herald, 9, "alpha", "anywhere").await;
    herald
        .wait_metric(r#"herald_edge_refused_total{reason="ip_denied"}"#, 3.0)
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;

    // Reload: the edge no longer denies 127.0.0.2; beta now denies 127.0.0.1.
    let text = std::fs::read_to_string(&herald.config_path).expect("read config");
    let text = text
        .replace(r#""127.0.0.2/32", "#, "")
        .replace(r#""127.0.0.3/32""#, r#""127.0.0.1/32""#);
    std::fs::write(&herald.config_path, text).expect("write config");
    herald.signal("HUP");
    herald.wait_line("herald reloaded").await;
    welcomed_from(&herald, 2, "alpha", "now-allowed").await;
    welcomed_from(&herald, 3, "beta", "now-allowed").await;
    assert_eq!(
        refused(&herald, 1, &url(&herald, "beta", "x"), &[]).await.0,
        403
    );
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 2).await;
}

#[tokio::test]
async fn the_global_cap_sheds_with_503_and_retry_after_before_the_upgrade() {
    let herald = herald()
        .edge(
            "limits",
            table(toml::toml! {
                max_connections = 2
                retry_after_secs = 7
            }),
        )
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let second = welcomed_from(&herald, 2, "alpha", "second").await;
    let (status, retry) = refused(&herald, 3, &url(&herald, "alpha", "x"), &[]).await;
    assert_eq!((status, retry.as_deref()), (503, Some("7")));
    herald
        .wait_metric(r#"herald_edge_refused_total{reason="overloaded"}"#, 1.0)
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
    // A place frees up once a connection ends.
    drop(second);
    let deadline = Instant::now() + WAIT;
    loop {
        match open_from(&herald, 3, &url(&herald, "alpha", "later"), &[]).await {
            Ok(_) => break,
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {
                assert!(
                    Instant::now() < deadline,
                    "the freed place was not given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 2).await;
}

#[tokio::test]
async fn per_address_connection_cap_and_connect_rate_answer_429() {
    // The cap and the rate each in a sandbox of its own: a connection that ends gives back its
    // place a moment after the client sees it go, which a cap would turn into a race.
    let capped = herald()
        .edge(
            "limits",
            table(toml::toml! {
                per_ip_max_connections = 2
                retry_after_secs = 2
            }),
        )
        .start()
        .await;
    let mut bystander = welcomed_from(&capped, 1, "alpha", "by").await;

    // Two connections held from 127.0.0.2; the third is over the cap.
    let _a = welcomed_from(&capped, 2, "alpha", "a").await;
    let _b = welcomed_from(&capped, 2, "alpha", "b").await;
    let (status, retry) = refused(&capped, 2, &url(&capped, "alpha", "c"), &[]).await;
    assert_eq!((status, retry.as_deref()), (429, Some("2")));
    capped
        .wait_metric(r#"herald_edge_refused_total{reason="ip_connections"}"#, 1.0)
        .await;
    // Other addresses are not affected.
    welcomed_from(&capped, 3, "alpha", "other").await;
    still_receives(&capped, ALPHA_KEY, "alpha", &mut bystander, 1).await;

    // One connect per four seconds, a burst of three: slow enough that a loaded machine makes
    // its four connects before a token comes back.
    let limited = herald()
        .edge(
            "limits",
            table(toml::toml! {
                per_ip_max_connections = 100
                per_ip_connect_rate = 0.25
                per_ip_connect_burst = 3
                retry_after_secs = 2
            }),
        )
        .start()
        .await;
    let mut bystander = welcomed_from(&limited, 1, "alpha", "by").await;
    // 127.0.0.3 connects three times (the burst); the fourth is too fast.
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(welcomed_from(&limited, 3, "alpha", &format!("r{i}")).await);
    }
    let (status, retry) = refused(&limited, 3, &url(&limited, "alpha", "r4"), &[]).await;
    assert_eq!((status, retry.as_deref()), (429, Some("2")));
    limited
        .wait_metric(r#"herald_edge_refused_total{reason="ip_rate"}"#, 1.0)
        .await;
    // Other addresses are not affected.
    welcomed_from(&limited, 4, "alpha", "other").await;
    still_receives(&limited, ALPHA_KEY, "alpha", &mut bystander, 1).await;
    // The bucket refills (one token per four seconds): a later connect is welcomed.
    let deadline = Instant::now() + WAIT;
    loop {
        match open_from(&limited, 3, &url(&limited, "alpha", "refilled"), &[]).await {
            Ok((ws, _)) => {
                let w = Client { ws }.next_json().await;
                assert_eq!(w["type"], "welcome", "{w}");
                break;
            }
            Err(tungstenite::Error::Http(r)) if r.status() == 429 => {
                assert!(Instant::now() < deadline, "the bucket never refilled");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[tokio::test]
async fn project_caps_on_connections_devices_and_subscriptions() {
    let herald = herald()
        .projects(&projects_with_limits(
            r#"
            max_connections = 3
            max_connections_per_user = 2
            max_subscriptions_per_connection = 1
            "#,
            "",
        ))
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "beta", "by").await;

    let _bob1 = welcomed_from(&herald, 1, "alpha", "bob").await;
    let _bob2 = welcomed_from(&herald, 1, "alpha", "bob").await;
    let (ws, _) = open_from(&herald, 1, &url(&herald, "alpha", "bob"), &[])
        .await
        .expect("upgrade");
    let mut refused_bob = Client { ws };
    let (code, reason, _) = refused_bob.expect_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (4011, "too many connections for this user")
    );
    // Until the close handshake ends, the refused connection still counts against the project,
    // and it is given back just after the socket closes: carol (the third) may meet a full
    // project until then. Each such refusal is counted, and so taken into account below.
    use futures_util::StreamExt as _;
    tokio::time::timeout(WAIT, async {
        while refused_bob.ws.next().await.is_some() {}
    })
    .await
    .expect("the server ends the refused connection");

    let channels = json!({"sub":"carol","aud":"alpha","channels":["*"],
        "exp": jsonwebtoken::get_current_timestamp() + 600});
    let carol_url = herald.url(
        "alpha",
        &format!("token={}", hs256(ALPHA_SECRET, None, &channels)),
    );
    let deadline = Instant::now() + WAIT;
    let mut early_refusals = 0.0;
    let mut carol = loop {
        match open_from(&herald, 1, &carol_url, &[]).await {
            Ok((ws, _)) => break Client { ws },
            Err(tungstenite::Error::Http(r)) if r.status() == 503 => {
                assert!(
                    Instant::now() < deadline,
                    "the refused connection's place was never given back"
                );
                early_refusals += 1.0;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    };
    let w = carol.next_json().await;
    assert_eq!(w["type"], "welcome", "first frame: {w}");
    assert_eq!(carol.subscribe(1, "g1").await["type"], "ack");
    let e = carol.subscribe(2, "g2").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(4429))
    );

    // Three alpha connections: the project is full on this edge; beta is not affected.
    let (status, retry) = refused(&herald, 1, &url(&herald, "alpha", "dave"), &[]).await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")));
    welcomed_from(&herald, 1, "beta", "eve").await;
    herald
        .wait_metric(
            r#"herald_edge_refused_total{reason="project_connections"}"#,
            1.0 + early_refusals,
        )
        .await;
    herald
        .wait_metric(
            r#"herald_edge_connects_total{result="too_many_connections",protocol="native"}"#,
            1.0,
        )
        .await;
    herald
        .wait_metric(
            r#"herald_edge_subscribes_refused_total{reason="too_many_groups"}"#,
            1.0,
        )
        .await;
    still_receives(&herald, BETA_KEY, "beta", &mut bystander, 1).await;
}

#[tokio::test]
async fn origins_are_checked_against_the_allow_lists() {
    let herald = herald()
        .edge(
            "limits",
            table(toml::toml! {
                origins = ["https://app.example.com"]
            }),
        )
        .projects(&projects_with_limits(
            "",
            r#"
            origins = ["https://*.beta.example"]
            require_origin = true
            "#,
        ))
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let alpha = url(&herald, "alpha", "a");
    let beta = url(&herald, "beta", "b");
    // Alpha: the edge's list; a native client without Origin is allowed.
    welcomed_with(&herald, 1, &alpha, &[]).await;
    welcomed_with(&herald, 1, &alpha, &[("origin", "https://app.example.com")]).await;
    assert_eq!(
        refused(&herald, 1, &alpha, &[("origin", "https://evil.example")])
            .await
            .0,
        403
    );
    // Beta: its own list replaces the edge's, and it requires an Origin.
    welcomed_with(&herald, 1, &beta, &[("origin", "https://m.beta.example")]).await;
    assert_eq!(refused(&herald, 1, &beta, &[]).await.0, 403);
    assert_eq!(
        refused(&herald, 1, &beta, &[("origin", "https://app.example.com")])
            .await
            .0,
        403
    );
    herald
        .wait_metric(r#"herald_edge_refused_total{reason="origin"}"#, 3.0)
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}

#[tokio::test]
async fn a_client_sending_too_fast_is_closed_with_4029() {
    let herald = herald()
        .edge(
            "limits",
            table(toml::toml! {
                message_rate = 5
                message_burst = 10
            }),
        )
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let mut c = welcomed_from(&herald, 1, "alpha", "fast").await;
    // Within the burst: answered.
    for id in 0..5 {
        c.send_json(json!({"type":"ping","id":id})).await;
        assert_eq!(c.next_json().await["type"], "pong");
    }
    for id in 0..40 {
        if c.ws
            .send(Message::text(json!({"type":"ping","id":id}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason, _) = c.expect_close().await;
    assert_eq!((code, reason.as_str()), (4029, "too many messages"));
    herald
        .wait_metric(
            r#"herald_edge_closes_total{code="rate_limited",protocol="native"}"#,
            1.0,
        )
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_closes_1009() {
    let herald = herald()
        .edge("max_message_bytes", 65_536)
        .edge("max_frame_bytes", 1024)
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let mut small = welcomed_from(&herald, 1, "alpha", "small").await;
    let pad = "x".repeat(900);
    small
        .send_json(json!({"type":"ping","id":1,"pad":pad}))
        .await;
    assert_eq!(small.next_json().await["type"], "pong");
    let mut big = welcomed_from(&herald, 1, "alpha", "big").await;
    let pad = "x".repeat(2000);
    big.send_json(json!({"type":"ping","id":1,"pad":pad})).await;
    let (code, _, _) = big.expect_close().await;
    assert_eq!(code, 1009);
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}

#[tokio::test]
async fn a_client_trickling_its_request_is_cut_at_the_handshake_deadline() {
    let herald = herald().edge("handshake_timeout_ms", 1000).start().await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let mut slow = tcp_from(&herald, 2).await.expect("connect");
    let start = Instant::now();
    let request = format!(
        "GET /ws/alpha?token={} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        token("alpha", "slow")
    );
    // One byte every 100 ms: the request would take far longer than the deadline.
    let mut cut = None;
    for b in request.bytes().chain(std::iter::repeat(b'x')) {
        if slow.write_all(&[b]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = Some(start.elapsed());
                break;
            }
            Ok(Ok(n)) => panic!("unexpected answer {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never cut");
    }
    // At the deadline, not later: a deadline that each byte pushed back would never cut (the
    // slack is a loaded machine's).
    let cut = cut.expect("cut");
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(8000),
        "cut after {cut:?}"
    );
    herald
        .wait_metric(
            r#"herald_edge_handshake_failures_total{reason="timeout"}"#,
            1.0,
        )
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    let f: Vec<&str> = after_name.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_counts_and_recovers() {
    let herald = herald()
        .nofile(64)
        .edge("handshake_timeout_ms", 30_000)
        .edge(
            "limits",
            table(toml::toml! {
                max_connections = 10000
            }),
        )
        .start()
        .await;
    let pid = herald.pid();
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    // Connections that never send a request hold a descriptor each until the deadline.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(
            tcp_from(&herald, 2)
                .await
                .expect("connect (kernel backlog)"),
        );
    }
    // Out of descriptors, awaited from outside (the admin endpoint cannot accept either): no
    // descriptor number below the limit is free. The accept loop must then back off, not spin.
    let free_below_limit = || {
        let open: std::collections::HashSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the server's descriptors")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        (0..64).filter(|n| !open.contains(n)).count()
    };
    eventually(WAIT, async || match free_below_limit() {
        0 => Ok(()),
        n => Err(format!("{n} of the server's 64 descriptors are free")),
    })
    .await;
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(pid) - before;
    assert!(
        used < 30,
        "the server used {used} ticks of CPU in 1 s while out of descriptors"
    );
    // The established client keeps receiving meanwhile.
    send(&mut grpc, publish("alpha", To::Broadcast, "1")).await;
    assert_eq!(bystander.next_msg().await["data"], 1);
    drop(idle);
    // Recovered: new clients are served again.
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        match open_from(&herald, 3, &url(&herald, "alpha", "after"), &[]).await {
            Ok((ws, _)) => break Client { ws },
            Err(e) => {
                assert!(Instant::now() < deadline, "not recovered: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(c.next_json().await["type"], "welcome");
    eventually(WAIT, async || {
        match herald
            .metric(r#"herald_edge_accept_errors_total{kind="fd_exhausted"}"#)
            .await
        {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("fd_exhausted accept errors: {n}")),
        }
    })
    .await;
    send(&mut grpc, publish("alpha", To::Broadcast, "2")).await;
    assert_eq!(bystander.next_msg().await["data"], 2);
    assert_eq!(c.next_msg().await["data"], 2);
}

#[tokio::test]
async fn the_default_cap_follows_the_open_file_limit_and_sheds_before_it_runs_out() {
    // 128 descriptors: the derived cap is 128 - min(256, 64) = 64 connections.
    let herald = herald()
        .nofile(128)
        .edge("handshake_timeout_ms", 30_000)
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    let mut idle = Vec::new();
    for _ in 0..70 {
        idle.push(tcp_from(&herald, 2).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, retry) = refused(&herald, 3, &url(&herald, "alpha", "x"), &[]).await;
    assert_eq!((status, retry.as_deref()), (503, Some("5")));
    eventually(WAIT, async || {
        match herald
            .metric(r#"herald_edge_refused_total{reason="overloaded"}"#)
            .await
        {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("overloaded refusals: {n}")),
        }
    })
    .await;
    assert_eq!(
        herald
            .metric(r#"herald_edge_accept_errors_total{kind="fd_exhausted"}"#)
            .await,
        0.0,
        "shed before the descriptors ran out"
    );
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
    drop(idle);
    let deadline = Instant::now() + WAIT;
    while open_from(&herald, 3, &url(&herald, "alpha", "later"), &[])
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "places were not given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn ipv6_clients_and_ipv4_clients_of_a_dual_stack_listener_are_matched() {
    let herald = herald()
        .ws_listen("[::]:0")
        .edge(
            "limits",
            table(toml::toml! {
                deny_ips = ["127.0.0.2/32"]
            }),
        )
        .projects(&projects_with_limits(
            "",
            r#"
            deny_ips = ["::1/128"]
            "#,
        ))
        .start()
        .await;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    // An IPv4 client arrives as ::ffff:127.0.0.2 on the dual-stack socket: matched as IPv4.
    assert_eq!(
        refused(&herald, 2, &url(&herald, "alpha", "x"), &[])
            .await
            .0,
        403
    );
    // An IPv6 client: denied by beta's list, not by alpha's.
    assert_eq!(
        refused(&herald, 0, &url(&herald, "beta", "x"), &[]).await.0,
        403
    );
    welcomed_from(&herald, 0, "alpha", "v6").await;
    welcomed_from(&herald, 1, "beta", "v4").await;
    herald
        .wait_metric(r#"herald_edge_refused_total{reason="ip_denied"}"#, 2.0)
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}

#[tokio::test]
async fn a_client_stalling_in_the_tls_handshake_is_cut_at_the_handshake_deadline() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = herald_tests::tls::Ca::root("test root");
    let leaf = ca.server(&["localhost"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (crt, key) = leaf.write(dir.path(), "ec", &[]);
    let mut plain = toml::Table::new();
    plain.insert("addr".into(), "127.0.0.1:0".into());
    let mut tls = toml::Table::new();
    tls.insert("cert_file".into(), crt.display().to_string().into());
    tls.insert("key_file".into(), key.display().to_string().into());
    let mut wss = toml::Table::new();
    wss.insert("addr".into(), "127.0.0.1:0".into());
    wss.insert("tls".into(), tls.into());
    let mut herald = herald()
        .listener(plain)
        .listener(wss)
        .edge("handshake_timeout_ms", 1000)
        .start()
        .await;
    let [plain, wss] = herald.listeners[..] else {
        panic!("two listeners: {:?}", herald.listeners);
    };
    herald.ws = plain;
    let mut bystander = welcomed_from(&herald, 1, "alpha", "by").await;
    // The start of a TLS record header, then nothing more.
    let mut stalled = TcpStream::connect(wss).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(15), stalled.read(&mut buf))
        .await
        .expect("cut before 15 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "no answer but the close: {read:?}"
    );
    let cut = start.elapsed();
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(8000),
        "cut after {cut:?}"
    );
    herald
        .wait_metric(
            r#"herald_edge_tls_handshake_failures_total{reason="timeout"}"#,
            1.0,
        )
        .await;
    still_receives(&herald, ALPHA_KEY, "alpha", &mut bystander, 1).await;
}
