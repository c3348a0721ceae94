//! @stomp/stompjs 7 under Node (`tests/clients/stomp.mjs`), run as a child process: options as
//! JSON, commands as JSON lines on stdin, events as JSON lines back; over a WebSocket or, with
//! `"sockjs": {"transports": [...]}`, through sockjs-client.

use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::mqtt::clients_dir;
use crate::{Herald, WAIT};

/// One stompjs client process: options in, JSON lines of events out, commands on stdin.
pub struct Stomp {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every event seen so far, in order (for failure messages).
    pub seen: Vec<Value>,
}

impl Stomp {
    /// Starts a client with `opts` (see the head of `tests/clients/stomp.mjs`); waits until it runs.
    pub async fn start(opts: Value) -> Stomp {
        let dir = clients_dir();
        assert!(
            dir.join("node_modules/@stomp/stompjs").is_dir(),
            "@stomp/stompjs is not installed: run `npm ci` in {}",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg(dir.join("stomp.mjs"))
            .arg(opts.to_string())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the STOMP tests (apt-get install nodejs npm)");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut s = Stomp {
            child,
            stdin,
            lines,
            seen: Vec::new(),
        };
        s.next("ready").await;
        s
    }

    /// Connects to `herald`'s `/ws/{project}` with CONNECT headers and options.
    pub async fn connect(herald: &Herald, project: &str, query: &str, extra: Value) -> Stomp {
        let mut opts = json!({ "url": herald.url(project, query) });
        if let (Some(o), Some(e)) = (opts.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        Stomp::start(opts).await
    }

    /// Waits for the next event named `event` (others are kept in `seen`).
    pub async fn next(&mut self, event: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {event} within {WAIT:?}; seen {:?}", self.seen))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("client exited before {event}; seen {:?}", self.seen));
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            self.seen.push(v.clone());
            if v["event"] == event {
                return v;
            }
        }
    }

    /// Sends a command.
    pub async fn send(&mut self, cmd: Value) {
        self.stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write to the client");
    }

    /// Subscribes with a receipt and waits for it: later publishes reach the subscription.
    pub async fn subscribe(&mut self, destination: &str, id: &str, ack: &str) {
        let receipt = format!("sub-{id}");
        self.send(json!({"subscribe": {"destination": destination, "id": id, "ack": ack, "receipt": receipt}}))
            .await;
        loop {
            let r = self.next("receipt").await;
            if r["id"] == receipt.as_str() {
                return;
            }
        }
    }

    /// The `ERROR` frame and the close code that follow a refusal.
    pub async fn refused(&mut self) -> (String, u64) {
        let e = self.next("stomp_error").await;
        let c = self.next("ws_close").await;
        (
            e["message"].as_str().unwrap_or_default().to_owned(),
            c["code"].as_u64().unwrap_or_default(),
        )
    }
}

impl Drop for Stomp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
