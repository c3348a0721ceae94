//! A webhook receiver for the tests: HTTPS on loopback with a certificate of a test CA, that
//! answers 5xx while told to, can stop listening (connection refused) and listen again on the
//! same port, and keeps every post it accepted with its signature checked.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::{Leaf, provider};

/// One accepted post.
#[derive(Debug, Clone)]
pub struct Post {
    /// The body, parsed.
    pub body: Value,
    /// Whether `herald-signature` was right for the body and secret.
    pub signed: bool,
}

/// What the receiver saw and how it answers.
#[derive(Default)]
struct State {
    /// Answer this many more posts with 503 (they are not kept).
    fail: usize,
    /// Posts answered 503.
    failed: usize,
    posts: Vec<Post>,
}

/// An HTTPS webhook receiver on 127.0.0.1.
pub struct Receiver {
    /// Where it listens (and listens again after [`Receiver::stop`]).
    pub addr: SocketAddr,
    leaf: Leaf,
    secret: String,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
}

/// Checks `t=<t>,v1=<hex>` against HMAC-SHA256(secret, "<t>.<body>").
pub fn signature_ok(header: &str, secret: &str, body: &[u8]) -> bool {
    use aws_lc_rs::hmac;
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let Some(tag) = (0..v1.len() / 2)
        .map(|i| u8::from_str_radix(v1.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    hmac::verify(&key, &msg, &tag).is_ok()
}

impl Receiver {
    /// Listens on a free port with `leaf` (a server certificate for 127.0.0.1), checking
    /// signatures with `secret`.
    pub async fn start(leaf: Leaf, secret: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut r = Self {
            addr,
            leaf,
            secret: secret.to_string(),
            state: Arc::default(),
            task: None,
        };
        r.task = Some(r.serve(listener));
        r
    }

    /// Stops listening: connections are refused until [`Receiver::resume`].
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind again");
        self.task = Some(self.serve(listener));
    }

    /// Answers the next `n` posts with 503.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().fail = n;
    }

    /// Posts answered 503 so far.
    pub fn failed(&self) -> usize {
        self.state.lock().failed
    }

    /// The accepted posts so far.
    pub fn posts(&self) -> Vec<Post> {
        self.state.lock().posts.clone()
    }

    /// Every event of the accepted posts, in order.
    pub fn events(&self) -> Vec<Value> {
        self.posts()
            .iter()
            .flat_map(|p| p.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let certs =
            vec![CertificateDer::from_pem_slice(self.leaf.cert_pem.as_bytes()).expect("cert")];
        let key = PrivateKeyDer::from_pem_slice(self.leaf.key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let state = self.state.clone();
        let secret = self.secret.clone();
        tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, state, secret) = (acceptor.clone(), state.clone(), secret.clone());
                conns.spawn(async move {
                    let Ok(mut s) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((headers, body)) = read_request(&mut s).await else {
                        return;
                    };
                    let status = {
                        let mut st = state.lock();
                        if st.fail > 0 {
                            st.fail -= 1;
                            st.failed += 1;
                            503
                        } else {
                            let sig = header(&headers, "herald-signature").unwrap_or_default();
                            st.posts.push(Post {
                                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                                signed: signature_ok(&sig, &secret, &body),
                            });
                            200
                        }
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Reads one request: its head as text and its body (by `content-length`).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = header(&head, "content-length")?.parse().ok()?;
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}
