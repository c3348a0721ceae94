//! A TCP relay in front of a server that loses the network the way a phone does: the client
//! learns its connection is gone, the server does not. [`Relay::lose`] closes the client side of
//! every live connection while the server side stays open (what the server sends is read and
//! dropped, counted by [`Relay::lost_bytes`]), and turns new connections away until
//! [`Relay::restore`].
//!
//! ```ignore
//! let relay = Relay::start(herald.ws).await;
//! relay.lose();
//! relay.restore();
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops accepting when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

struct State {
    up: AtomicBool,
    /// Bumped by every loss; each connection watches it.
    losses: watch::Sender<u64>,
    lost_bytes: AtomicU64,
}

impl Relay {
    /// Relays connections on a port of 127.0.0.1 to `server`.
    pub async fn start(server: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            losses: watch::channel(0).0,
            lost_bytes: AtomicU64::new(0),
        });
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !s.up.load(Ordering::SeqCst) {
                    // No network: the client sees its connection end at once.
                    continue;
                }
                let Ok(server) = TcpStream::connect(server).await else {
                    continue;
                };
                tokio::spawn(pump(client, server, s.clone()));
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    /// Loses the network: every live connection's client side is closed, its server side stays
    /// open and silent; new connections are turned away.
    pub fn lose(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.state.losses.send_modify(|n| *n += 1);
    }

    /// The network is back: new connections are relayed again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Bytes the server sent into a lost network.
    pub fn lost_bytes(&self) -> u64 {
        self.state.lost_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(mut client: TcpStream, mut server: TcpStream, state: Arc<State>) {
    let mut losses = state.losses.subscribe();
    let lost = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        r = losses.changed() => r.is_ok(),
    };
    drop(client);
    if !lost {
        return;
    }
    // The server's side lives on until the server closes it.
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = server.read(&mut buf).await {
        if n == 0 {
            break;
        }
        state.lost_bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
}
