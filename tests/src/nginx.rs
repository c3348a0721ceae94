//! nginx in front of the sandbox: the shipped `deploy/nginx/herald.conf` with a test's addresses,
//! ports and paths substituted, run for real on loopback until dropped.
//!
//! ```ignore
//! let nginx = Nginx::start(dir.path(), &NginxConf { tls_port, plain_port: None, cert: &crt,
//!     key: &key, edges: &[edge_ws] }).await;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;

/// The server name the tests give nginx (and their certificates).
pub const DOMAIN: &str = "push.herald.test";

/// The nginx binary of the Debian package (or a local build).
pub fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("nginx not found: install the nginx package (apt-get install nginx)")
}

/// A free loopback port (bound, then released for nginx to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// What a test changes in the shipped configuration.
pub struct NginxConf<'a> {
    /// The TLS port (the shipped `listen 443 ssl`), on 127.0.0.1.
    pub tls_port: u16,
    /// A plain (`ws`) port on 127.0.0.1 beside it, for clients without TLS; the shipped file
    /// has none.
    pub plain_port: Option<u16>,
    /// The certificate chain file.
    pub cert: &'a Path,
    /// Its key.
    pub key: &'a Path,
    /// The edges' plain listeners (the upstream's servers).
    pub edges: &'a [SocketAddr],
}

/// The shipped configuration with `c`'s addresses, ports and paths, its logs and temporary files
/// in `dir`. nginx reaches the edges from 127.0.0.2, so its address differs from the clients'.
pub fn nginx_config(dir: &Path, c: &NginxConf<'_>) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/herald.conf"),
    )
    .expect("deploy/nginx/herald.conf");
    let mut conf = shipped;
    let mut swap = |from: &str, to: String| {
        assert!(
            conf.contains(from),
            "deploy/nginx/herald.conf no longer has {from:?}"
        );
        // Every upstream lists the same edges.
        let n = if from.starts_with("server 10.0.0.11") {
            usize::MAX
        } else {
            1
        };
        conf = conf.replacen(from, &to, n);
    };
    let d = dir.display();
    swap(
        "pid /run/nginx-herald.pid;",
        format!("pid {d}/nginx.pid;\nerror_log {d}/error.log;"),
    );
    swap("worker_processes auto;", "worker_processes 1;".into());
    swap(
        "access_log /var/log/nginx/herald.access.log herald;",
        format!("access_log {d}/access.log herald;"),
    );
    swap(
        "http {",
        format!(
            "http {{\n    client_body_temp_path {d}/body;\n    \
             proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fcgi;\n    \
             uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;"
        ),
    );
    let servers: String = c
        .edges
        .iter()
        .map(|e| format!("server {e} max_fails=1 fail_timeout=5s;"))
        .collect::<Vec<_>>()
        .join("\n        ");
    swap(
        "server 10.0.0.11:8080 max_fails=1 fail_timeout=5s;\n        \
         server 10.0.0.12:8080 max_fails=1 fail_timeout=5s;",
        servers,
    );
    let mut listen = format!("listen 127.0.0.1:{} ssl;", c.tls_port);
    if let Some(p) = c.plain_port {
        listen.push_str(&format!("\n        listen 127.0.0.1:{p};"));
    }
    swap("listen 443 ssl;", listen);
    swap(
        "server_name push.example.com;",
        format!("server_name {DOMAIN};"),
    );
    swap(
        "/etc/nginx/tls/push.example.com.crt",
        c.cert.display().to_string(),
    );
    swap(
        "/etc/nginx/tls/push.example.com.key",
        c.key.display().to_string(),
    );
    // At the server level, so every location connects from it.
    swap(
        "proxy_http_version 1.1;",
        "proxy_http_version 1.1;\n        proxy_bind 127.0.0.2;".into(),
    );
    conf
}

/// nginx, running until dropped.
pub struct Nginx {
    child: tokio::process::Child,
    dir: PathBuf,
}

impl Nginx {
    /// Writes `conf` into `dir` and runs nginx on it; waits until `port` accepts connections.
    pub async fn start(dir: &Path, conf: &str, port: u16) -> Self {
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("write nginx.conf");
        let mut child = tokio::process::Command::new(nginx_bin())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            // One process, so killing it leaves no worker behind.
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Up to 30 s: a loaded machine starts processes slowly.
        for _ in 0..600 {
            if TcpStream::connect(addr).await.is_ok() {
                return Self {
                    child,
                    dir: dir.to_path_buf(),
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx does not listen on {addr}");
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
