//! Loopback ports for servers the sandbox starts.

use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, Result};

/// Lowest port handed out: above the ephemeral range (32768-60999), so a kernel-chosen client
/// port cannot take it between the check and the server's bind.
const LOW: u16 = 61_000;
/// One past the highest port handed out.
const HIGH: u16 = 65_000;

/// A free loopback port in 61000-65000. Processes start at different points of the range and
/// walk it, so parallel tests rarely try the same port; a server that still loses the race finds
/// out with [`listens`] and tries another.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        let seed = (u64::from(std::process::id()) * 7919 + nanos) % u64::from(HIGH - LOW - 200);
        let _ = NEXT.compare_exchange(0, LOW + seed as u16, Ordering::Relaxed, Ordering::Relaxed);
    }
    for _ in 0..(HIGH - LOW) {
        let mut p = NEXT.fetch_add(1, Ordering::Relaxed);
        if p >= HIGH {
            NEXT.store(LOW + 1, Ordering::Relaxed);
            p = LOW;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return Ok(p);
        }
    }
    Err(Error::NoFreePort)
}

/// Asks the server on loopback `port` who it is: sends `request` and returns what it answers
/// until `done` says the answer is whole (`None` when nothing listens or it answers nothing
/// within 5 s). This tells our own server from another process's that won a race for the same
/// free port, without reading the kernel's whole socket table (seconds when a load test holds
/// 100,000 sockets).
pub async fn ask(port: u16, request: &[u8], done: impl Fn(&str) -> bool) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(request).await.ok()?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if done(&String::from_utf8_lossy(&answer)) {
                break;
            }
        }
        Some(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Waits until `process` answers on `port` as itself (`is_ours`): `Ok(true)`, or `Ok(false)`
/// when it exited first (its port was taken); an error after `within`.
pub async fn wait_ours<F: Future<Output = bool>>(
    process: &mut crate::Process,
    port: u16,
    within: Duration,
    is_ours: impl Fn(u16, u32) -> F,
) -> Result<bool> {
    let until = Instant::now() + within;
    loop {
        if process.exited().is_some() {
            return Ok(false);
        }
        if is_ours(port, process.pid()).await {
            return Ok(true);
        }
        if Instant::now() > until {
            return Err(Error::NotReady {
                what: format!("{} listening on port {port}", process.name()),
                within,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_high_distinct_and_bindable() {
        let a = free_port().expect("port");
        let b = free_port().expect("port");
        assert_ne!(a, b);
        for p in [a, b] {
            assert!((LOW..HIGH).contains(&p), "{p}");
            assert!(TcpListener::bind(("127.0.0.1", p)).is_ok());
        }
    }

    #[tokio::test]
    async fn a_server_is_asked_who_it_is_and_silence_is_none() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut b = [0u8; 3];
            tokio::io::AsyncReadExt::read_exact(&mut s, &mut b)
                .await
                .expect("read");
            tokio::io::AsyncWriteExt::write_all(&mut s, b"I am 42\nrest")
                .await
                .expect("write");
        });
        let a = ask(port, b"who", |a| a.contains('\n')).await;
        assert!(a.is_some_and(|a| a.starts_with("I am 42\n")));
        assert_eq!(
            ask(port, b"who", |_| true).await,
            None,
            "nothing listens any more"
        );
    }
}
