//! Bad client input, slow consumers, dead peers and shutdown: each gets its documented answer and
//! never disturbs other clients.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use herald_tests::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_unknown_and_binary_frames_get_error_frames() {
    let herald = herald().start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut bystander = herald.connect("alpha", &token("alpha", "by")).await;
    let mut c = herald.connect("alpha", &token("alpha", "bad")).await;

    c.ws.send(Message::text("{not json")).await.expect("send");
    let e = c.next_json().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64()),
        (Some("error"), Some(4400))
    );
    c.send_json(json!({"type":"dance","id":9})).await;
    let e = c.next_json().await;
    assert_eq!(
        (e["code"].as_u64(), e["id"].as_u64()),
        (Some(4401), Some(9))
    );
    c.send_json(json!({"type":"subscribe","id":3})).await;
    assert_eq!(c.next_json().await["code"], 4400);
    c.ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(c.next_json().await["code"], 4415);
    c.send_json(json!({"type":"ping","id":42})).await;
    assert_eq!(c.next_json().await, json!({"type":"pong","id":42}));

    // Still connected and receiving, and so is everyone else.
    send(&mut grpc, publish("alpha", To::Broadcast, "7")).await;
    assert_eq!(c.next_msg().await["data"], 7);
    assert_eq!(bystander.next_msg().await["data"], 7);
}

#[tokio::test]
async fn oversized_message_closes_with_1009_and_others_keep_receiving() {
    let herald = herald().edge("max_message_bytes", 4096).start().await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut bystander = herald.connect("alpha", &token("alpha", "by")).await;
    let mut c = herald.connect("alpha", &token("alpha", "big")).await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(10_000));
    c.ws.send(Message::text(big)).await.expect("send");
    let (code, _, _) = c.expect_close().await;
    assert_eq!(code, 1009);
    send(&mut grpc, publish("alpha", To::Broadcast, "1")).await;
    assert_eq!(bystander.next_msg().await["data"], 1);
}

#[tokio::test]
async fn oversized_first_frame_closes_with_1009_and_a_wrong_one_with_4001() {
    let herald = herald().edge("max_message_bytes", 4096).start().await;
    // An `auth` frame of 100 KB: over `max_message_bytes`, whatever it is.
    let (mut ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    let big = format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(100_000));
    ws.send(Message::text(big)).await.expect("send");
    let (code, reason, _) = Client { ws }.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));

    // A first frame of normal size that is not `auth` stays 4001.
    let (mut ws, _) = herald
        .open(&herald.url("alpha", ""), &[])
        .await
        .expect("upgrade");
    ws.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .expect("send");
    let (code, _, _) = Client { ws }.expect_close().await;
    assert_eq!(code, 4001);
}

#[tokio::test]
async fn a_slow_consumer_whose_socket_stays_full_is_dropped_and_counted_apart() {
    // The queue overflows, and the socket takes nothing within the close timeout: no close frame
    // can be written, so the connection just ends (documented; counted as `slow_consumer_unsent`).
    let herald = herald()
        .edge("max_queued_bytes", 65_536)
        .edge("close_timeout_ms", 300)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(herald.ws).await.expect("connect");
    let url = herald.url("alpha", &format!("token={}", token("alpha", "stuck")));
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    let mut stuck = Client { ws };
    assert_eq!(stuck.next_json().await["type"], "welcome");

    // Publish 4 KiB messages until the edge reports the unsent close (the kernel's buffers take
    // the first few megabytes), never reading.
    let payload = format!(r#""{}""#, "p".repeat(4096));
    let unsent = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("herald_edge_closes_total{")
                && l.contains(r#"code="slow_consumer_unsent""#)
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent = 0u32;
    loop {
        for _ in 0..100 {
            send(&mut grpc, publish("alpha", To::Broadcast, &payload)).await;
        }
        sent += 100;
        let (_, metrics) = herald.admin_get("/metrics").await;
        if unsent(&metrics) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && sent < 20_000,
            "no slow_consumer_unsent close after {sent} messages"
        );
    }

    // What the client finally reads ends without a close frame.
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match stuck.ws.next().await {
                Some(Ok(Message::Close(f))) => return Err(format!("close frame {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(()),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_eq!(ended, Ok(()));
}

#[tokio::test]
async fn slow_consumer_is_cut_off_with_4008_while_others_receive_everything() {
    // The close frame waits behind what the kernel buffered; give the slow reader time to get there.
    let herald = herald()
        .edge("max_queued_bytes", 65_536)
        .edge("close_timeout_ms", 20_000)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    let mut fast = herald.connect("alpha", &token("alpha", "fast")).await;

    // A client with a tiny receive buffer that stops reading.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = sock.connect(herald.ws).await.expect("connect");
    let url = herald.url("alpha", &format!("token={}", token("alpha", "slow")));
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgrade");
    let mut slow = Client { ws };
    assert_eq!(slow.next_json().await["type"], "welcome");
    // Messages of 4 KiB until the edge cuts the slow client off (its kernel buffers and the
    // 64 KiB queue full: hundreds of messages, depending on the kernel), then 1,000 more (4 MiB).
    // They go in steps the reading client can keep up with, so only the one that stopped reading
    // falls behind, and the reading one receives every message, before the cut and after.
    let payload = format!(r#""{}""#, "p".repeat(4096));
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let fast_reader = tokio::spawn(async move {
        loop {
            let m = fast.next_msg().await;
            assert_eq!(m["data"].as_str().map(str::len), Some(4096), "{m}");
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let cut_off = async || -> bool {
        herald
            .admin_get("/metrics")
            .await
            .1
            .lines()
            .filter(|l| l.starts_with("herald_edge_slow_consumers_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            >= 1.0
    };
    let publishing = async {
        let (mut sent, mut after_cut) = (0u64, None);
        while after_cut.is_none_or(|from| sent < from + 1_000) {
            for _ in 0..10 {
                send(&mut grpc, publish("alpha", To::Broadcast, &payload)).await;
            }
            sent += 10;
            tokio::time::timeout(WAIT, async {
                while received.load(std::sync::atomic::Ordering::Relaxed) < sent {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await
            .expect("the reading client keeps up");
            if after_cut.is_none() && cut_off().await {
                after_cut = Some(sent);
            }
            assert!(
                sent < 20_000,
                "no slow consumer cut off after {sent} messages (80 MiB)"
            );
        }
        sent
    };
    // Once the edge has cut it off, the slow client reads what was buffered, then the close
    // frame: within the close timeout, however long the publishing takes on a loaded machine.
    let slow_reading = async {
        eventually(WAIT * 4, async || {
            if cut_off().await {
                Ok(())
            } else {
                Err("no slow consumer cut off yet")
            }
        })
        .await;
        slow.expect_close().await
    };
    let (sent, (code, reason, before)) = tokio::join!(publishing, slow_reading);
    fast_reader.abort();
    assert_eq!(
        received.load(std::sync::atomic::Ordering::Relaxed),
        sent,
        "the reading client received every message"
    );
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    assert!(
        (before.len() as u64) < sent,
        "the slow client cannot have received everything: {} of {sent}",
        before.len()
    );
}

#[tokio::test]
async fn server_pings_and_closes_peers_that_stop_answering() {
    let herald = herald()
        .edge("ping_interval_secs", 1)
        .edge("pong_timeout_secs", 2)
        .start()
        .await;
    let mut grpc = herald.grpc(Some(ALPHA_KEY)).await;
    // An answering client: tungstenite answers pings while we read.
    let mut live = herald.connect("alpha", &token("alpha", "live")).await;
    // A silent client: reads nothing, so it never answers.
    let mut dead = herald.connect("alpha", &token("alpha", "dead")).await;

    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, live.ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(m))) => panic!("unexpected {m:?}"),
            Ok(other) => panic!("live client lost: {other:?}"),
            Err(_) => break,
        }
    }
    assert!(pings >= 2, "answered {pings} pings in 5 s");
    let (code, reason, _) = dead.expect_close().await;
    assert_eq!((code, reason.as_str()), (4006, "ping timeout"));
    send(&mut grpc, publish("alpha", To::Broadcast, "1")).await;
    assert_eq!(live.next_msg().await["data"], 1);
}

#[tokio::test]
async fn sigterm_closes_every_client_with_going_away_and_exits_zero() {
    let mut herald = herald().edge("reconnect_jitter_ms", 4000).start().await;
    let mut a = herald.connect("alpha", &token("alpha", "a")).await;
    let mut b = herald.connect("beta", &token("beta", "b")).await;
    herald.signal("TERM");
    for c in [&mut a, &mut b] {
        let (code, _, before) = c.expect_close().await;
        assert_eq!(code, 1001);
        let hint = before
            .iter()
            .find(|f| f["type"] == "disconnect")
            .expect("disconnect frame");
        let ms = hint["reconnect_after_ms"].as_u64().expect("hint");
        assert!(
            (1000..=4000).contains(&ms),
            "reconnect hint {ms} within jitter range"
        );
    }
    let status = herald.wait_exit().await;
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn readiness_says_draining_until_the_drain_ends() {
    let mut herald = herald().edge("close_timeout_ms", 60_000).start().await;
    // A client that does not read: the drain waits for it (up to the grace period).
    let mut stuck = herald.connect("alpha", &token("alpha", "stuck")).await;
    herald.wait_ready().await;
    herald.signal("TERM");
    let until = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = herald.admin_get("/readyz").await;
        if status == 503 {
            assert_eq!(body, "draining\n");
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "never draining: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _, _) = stuck.expect_close().await;
    assert_eq!(code, 1001);
    assert!(herald.wait_exit().await.success());
}

#[tokio::test]
async fn a_handshake_finished_during_the_drain_is_closed_with_going_away() {
    let mut herald = herald().edge("close_timeout_ms", 60_000).start().await;
    let mut stuck = herald.connect("alpha", &token("alpha", "stuck")).await;
    // An upgrade request sent in two parts, the second after the drain began.
    let mut tcp = tokio::net::TcpStream::connect(herald.ws)
        .await
        .expect("tcp");
    let tok = token("alpha", "late");
    let head = format!(
        "GET /ws/alpha?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tcp.write_all(head.as_bytes()).await.expect("write");
    herald.signal("TERM");
    let until = std::time::Instant::now() + WAIT;
    while herald.admin_get("/readyz").await.0 != 503 {
        assert!(std::time::Instant::now() < until, "never draining");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tcp.write_all(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .expect("write");
    // A server close frame (FIN + opcode 8) whose status is 1001 (0x03e9).
    let has_close = |b: &[u8]| b.windows(4).any(|w| w[0] == 0x88 && w[2..] == [0x03, 0xe9]);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !has_close(&got) {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no close in time: {}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(has_close(&got), "no close frame with 1001: {text}");
    drop(tcp);
    let (code, _, _) = stuck.expect_close().await;
    assert_eq!(code, 1001);
    assert!(herald.wait_exit().await.success());
}
