//! A server TLS connection whose buffers the edge owns (rustls's unbuffered API): between reads
//! and writes it keeps the record layer's state and nothing else, so an idle `wss` connection
//! holds no receive buffer. rustls's buffered `ServerConnection` (what `tokio-rustls` drives)
//! keeps a 4 KiB receive buffer for every connection once it has read anything
//! (benches/README.md, "RSS per idle wss connection").
//!
//! Reads go to a buffer on the stack and are decrypted there; only what a read leaves over (a
//! record not yet whole, plaintext the reader did not take) is copied to the heap, and freed as
//! soon as it is used up. Writes are encrypted into a buffer of the thread and written at once;
//! only what the socket does not take is kept, until it is written.

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, UnbufferedConnectionCommon, UnbufferedStatus,
    WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, into a buffer on the stack: a whole record of the
/// largest size (16 KiB of plaintext and its overhead) fits.
const READ_CHUNK: usize = 16 * 1024 + 256;

/// Plaintext encrypted at a time: one record.
const WRITE_CHUNK: usize = 16 * 1024;

/// Room for a record's header, explicit nonce, content type and tag around [`WRITE_CHUNK`].
const RECORD_OVERHEAD: usize = 64;

type Conn = UnbufferedConnectionCommon<ServerConnectionData>;

thread_local! {
    /// Plaintext gathered from a write's slices, and the record made of it: one pair per thread,
    /// so a write neither allocates nor clears a buffer.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; 2 * WRITE_CHUNK + RECORD_OVERHEAD]);
}

/// A TLS connection over a TCP socket, server side, after its handshake ([`accept`]).
pub(crate) struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// TLS bytes read but not processed: the start of a record not yet whole. Empty (and
    /// unallocated) between records.
    incoming: Vec<u8>,
    /// Plaintext decrypted but not yet read, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// TLS bytes to write, from `out_at`: handshake messages, alerts, and records the socket
    /// did not take at once.
    out: Vec<u8>,
    out_at: usize,
    /// The peer closed its side (close_notify or the socket's end).
    eof: bool,
    /// close_notify was queued.
    sent_close: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("incoming", &self.incoming.len())
            .field("plain", &(self.plain.len() - self.plain_at))
            .field("out", &(self.out.len() - self.out_at))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What processing received records produced.
#[derive(Default)]
struct Processed {
    /// Bytes of the input used up (processed records).
    used: usize,
    /// The handshake is over: application data may be written.
    writable: bool,
    /// The peer sent close_notify, or the connection is closed.
    closed: bool,
}

/// What to do once rustls is ready for application data.
type OnWritable<'f> =
    &'f mut dyn FnMut(&mut WriteTraffic<'_, ServerConnectionData>) -> io::Result<()>;

/// Processes the records in `input` until rustls needs more bytes or is ready for application
/// data (then `on_writable` runs): plaintext goes to `sink`, handshake messages and alerts to
/// `out`.
fn process(
    conn: &mut Conn,
    input: &mut [u8],
    out: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]),
    mut on_writable: Option<OnWritable<'_>>,
) -> io::Result<Processed> {
    let mut p = Processed::default();
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut input[p.used..]);
        let mut stop = false;
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                alerts(conn, out);
                return Err(tls_err(e));
            }
        };
        match state {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_err)?;
                    discard += rec.discard;
                    sink(rec.payload);
                }
            }
            ConnectionState::ReadEarlyData(mut r) => {
                // Early data is not enabled (`max_early_data_size` 0); taken as data if it were.
                while let Some(rec) = r.next_record() {
                    let rec = rec.map_err(tls_err)?;
                    discard += rec.discard;
                    sink(rec.payload);
                }
            }
            ConnectionState::EncodeTlsData(mut e) => {
                let at = out.len();
                // A handshake message; its size is asked for when the guess is short.
                out.resize(at + 2048, 0);
                let n = match e.encode(&mut out[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(s)) => {
                        out.resize(at + s.required_size, 0);
                        e.encode(&mut out[at..]).map_err(io::Error::other)?
                    }
                    Err(e) => return Err(io::Error::other(e)),
                };
                out.truncate(at + n);
            }
            // What was encoded is in `out`, written before anything encrypted after it.
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::WriteTraffic(mut w) => {
                if let Some(f) = on_writable.take() {
                    f(&mut w)?;
                }
                p.writable = true;
                stop = true;
            }
            // Once; the connection may still write (TLS 1.3 half-close), as the next state says.
            ConnectionState::PeerClosed => p.closed = true,
            ConnectionState::Closed => {
                p.closed = true;
                stop = true;
            }
            // BlockedHandshake: more bytes needed.
            _ => stop = true,
        }
        p.used += discard;
        if stop {
            return Ok(p);
        }
    }
}

/// Writes to the socket with `writev`, as plain connections do (the harness counts `writev` and
/// `write` calls from `/proc/PID/io`; a `send` is not counted).
fn write_tcp(tcp: &mut TcpStream, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
    Pin::new(tcp).poll_write_vectored(cx, &[io::IoSlice::new(b)])
}

/// Moves the alert rustls queued on an error (a handshake failure's reason) to `out`, so the
/// peer learns why; best effort.
fn alerts(conn: &mut Conn, out: &mut Vec<u8>) {
    for _ in 0..4 {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                let mut buf = [0u8; RECORD_OVERHEAD];
                if let Ok(n) = e.encode(&mut buf) {
                    out.extend_from_slice(&buf[..n]);
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return,
        }
    }
}

/// Runs the server side of a handshake on `tcp`.
pub(crate) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = UnbufferedServerConnection::new(config).map_err(tls_err)?;
    let mut s = TlsStream {
        tcp,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        out: Vec::new(),
        out_at: 0,
        eof: false,
        sent_close: false,
    };
    loop {
        let TlsStream {
            conn,
            incoming,
            plain,
            out,
            ..
        } = &mut s;
        let p = match process(conn, incoming, out, |b| plain.extend_from_slice(b), None) {
            Ok(p) => p,
            Err(e) => {
                let _ = s.tcp.write_all(&s.out).await;
                return Err(e);
            }
        };
        incoming.drain(..p.used);
        if !s.out.is_empty() {
            s.tcp.write_all(&s.out).await?;
            s.out = Vec::new();
        }
        if p.closed {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // TLS 1.3 lets the server write before the client's Finished; the handshake (and a
        // client certificate) is complete only with it.
        if p.writable && !s.conn.is_handshaking() {
            break;
        }
        let at = s.incoming.len();
        s.incoming.resize(at + 4096, 0);
        let n = s.tcp.read(&mut s.incoming[at..]).await?;
        s.incoming.truncate(at + n);
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    // What came with the client's last flight (the first request) stays, exactly sized.
    s.incoming.shrink_to_fit();
    s.plain.shrink_to_fit();
    Ok(s)
}

impl TlsStream {
    /// The connection's TLS state (peer certificates, negotiated protocol).
    pub(crate) fn state(&self) -> &rustls::CommonState {
        &self.conn
    }

    /// Ready once a read may give something: plaintext kept from an earlier read, the end, or
    /// bytes on the socket.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plain_at < self.plain.len() || self.eof {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Writes what `out` holds; `Ready` once it is all written (and freed).
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(write_tcp(&mut self.tcp, cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes `bytes` after what `out` holds: at once when it holds nothing, the rest kept.
    fn send(&mut self, cx: &mut Context<'_>, mut bytes: &[u8]) -> io::Result<()> {
        if self.out_at == self.out.len() {
            while !bytes.is_empty() {
                match write_tcp(&mut self.tcp, cx, bytes) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(n)) => bytes = &bytes[n..],
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
        self.out.extend_from_slice(bytes);
        match self.poll_out(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Ok(()),
        }
    }

    /// Processes records kept from an earlier read, then runs `f` once the connection may
    /// write; plaintext that comes on the way is kept for the reader (and the task woken).
    fn writable(&mut self, cx: &mut Context<'_>, f: OnWritable<'_>) -> io::Result<()> {
        let had = self.plain.len();
        let Self {
            conn,
            incoming,
            plain,
            out,
            ..
        } = self;
        let p = process(conn, incoming, out, |b| plain.extend_from_slice(b), Some(f))?;
        incoming.drain(..p.used);
        if p.closed {
            self.eof = true;
        }
        if self.plain.len() > had {
            cx.waker().wake_by_ref();
        }
        if !p.writable {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        Ok(())
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                let n = (this.plain.len() - this.plain_at).min(dst.remaining());
                dst.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                if this.plain_at == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Answers (alerts, key updates) go out before more is read; a full socket does not
            // hold reading up.
            if let Poll::Ready(Err(e)) = this.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            // Not cleared: the socket's read says how much of it holds bytes.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            let chunk = rb.filled_mut();
            let n = chunk.len();
            if n == 0 {
                // The socket's end without close_notify: the end of the stream all the same
                // (a WebSocket has its own close handshake).
                this.eof = true;
                continue;
            }
            let filled_before = dst.filled().len();
            let Self {
                conn,
                incoming,
                plain,
                out,
                ..
            } = this;
            // Plaintext to the reader's buffer first; what does not fit is kept.
            let sink = |mut b: &[u8]| {
                if plain.is_empty() {
                    let k = b.len().min(dst.remaining());
                    dst.put_slice(&b[..k]);
                    b = &b[k..];
                }
                plain.extend_from_slice(b);
            };
            let p = if incoming.is_empty() {
                let p = process(conn, chunk, out, sink, None)?;
                if p.used < n {
                    *incoming = chunk[p.used..n].to_vec();
                }
                p
            } else {
                incoming.extend_from_slice(chunk);
                let p = process(conn, incoming, out, sink, None)?;
                incoming.drain(..p.used);
                if incoming.is_empty() {
                    *incoming = Vec::new();
                }
                p
            };
            if p.closed {
                this.eof = true;
            }
            if let Poll::Ready(Err(e)) = this.poll_out(cx) {
                return Poll::Ready(Err(e));
            }
            if dst.filled().len() > filled_before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // What was encrypted before goes first: a full socket holds the writer back.
        ready!(this.poll_out(cx))?;
        SCRATCH.with_borrow_mut(|scratch| {
            let (data, cipher) = scratch.split_at_mut(WRITE_CHUNK);
            let mut n = 0;
            for b in bufs {
                let k = b.len().min(WRITE_CHUNK - n);
                data[n..n + k].copy_from_slice(&b[..k]);
                n += k;
                if n == WRITE_CHUNK {
                    break;
                }
            }
            if n == 0 {
                return Poll::Ready(Ok(0));
            }
            let data = &data[..n];
            let mut len = 0;
            let mut large: Option<Vec<u8>> = None;
            this.writable(cx, &mut |w| {
                match w.encrypt(data, cipher) {
                    Ok(k) => len = k,
                    // Records rustls had to send first (a key update) do not fit.
                    Err(EncryptError::InsufficientSize(s)) => {
                        let mut v = vec![0; s.required_size];
                        let k = w.encrypt(data, &mut v).map_err(io::Error::other)?;
                        v.truncate(k);
                        large = Some(v);
                    }
                    Err(e) => return Err(io::Error::other(e)),
                }
                Ok(())
            })?;
            let bytes = large.as_deref().unwrap_or(&cipher[..len]);
            this.send(cx, bytes)?;
            Poll::Ready(Ok(n))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.sent_close {
            this.sent_close = true;
            let mut alert = [0u8; RECORD_OVERHEAD];
            let mut len = 0;
            // A connection rustls already closed sends nothing more.
            if this
                .writable(cx, &mut |w| {
                    len = w.queue_close_notify(&mut alert).map_err(io::Error::other)?;
                    Ok(())
                })
                .is_ok()
            {
                this.out.extend_from_slice(&alert[..len]);
            }
        }
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = crate::tls::provider();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let der = CertificateDer::from(cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A client sends `data` in pieces of varied sizes (a key update half-way where TLS 1.3
    /// allows it); the server echoes everything through [`TlsStream`], then the client closes.
    async fn echo(versions: &[&'static rustls::SupportedProtocolVersion]) {
        let (server, client) = configs(versions);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = accept(tcp, server).await.expect("handshake");
            assert_eq!(s.state().alpn_protocol(), None);
            let mut buf = [0u8; 100];
            let mut echoed = 0usize;
            loop {
                let n = s.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n]).await.expect("write");
                s.flush().await.expect("flush");
                echoed += n;
            }
            // Idle: nothing kept but the record layer.
            assert!(s.incoming.capacity() == 0 && s.plain.capacity() == 0 && s.out.capacity() == 0);
            s.shutdown().await.expect("shutdown");
            echoed
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut c = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("client handshake");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        // A little, then new keys where the version has them (the server answers a TLS 1.3
        // key update with its own).
        c.write_all(&data[..10]).await.expect("send");
        if c.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
            c.get_mut().1.refresh_traffic_keys().expect("key update");
        }
        let (mut r, mut w) = tokio::io::split(c);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read echo");
            got
        });
        let mut at = 10;
        let mut size = 1;
        while at < data.len() {
            let end = (at + size).min(data.len());
            w.write_all(&data[at..end]).await.expect("send");
            at = end;
            size = size * 3 % 40_000 + 1;
        }
        w.flush().await.expect("flush");
        w.shutdown().await.expect("close_notify");
        assert_eq!(served.await.expect("server"), data.len());
        let got = reader.await.expect("reader");
        assert!(
            got == data,
            "echo differs: {} of {} bytes",
            got.len(),
            data.len()
        );
    }

    #[tokio::test]
    async fn echoes_large_and_small_writes_tls13() {
        echo(&[&rustls::version::TLS13]).await;
    }

    #[tokio::test]
    async fn echoes_large_and_small_writes_tls12() {
        echo(&[&rustls::version::TLS12]).await;
    }
}
