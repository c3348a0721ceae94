//! The MQTT clients people use (mqtt.js 5 under Node, Paho for Python; `tests/clients/`), run as
//! child processes: options as JSON, commands as JSON lines on stdin, events as JSON lines back.
//!
//! ```ignore
//! let mut c = MqttClient::start(Lib::MqttJs, json!({"url": url, "password": token})).await;
//! c.expect("connect").await;
//! ```

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::WAIT;

/// Which client library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// mqtt.js 5 (`tests/clients/mqttjs.mjs`).
    MqttJs,
    /// Paho MQTT for Python (`tests/clients/paho_client.py`).
    Paho,
}

/// The directory of the test clients.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A running client.
pub struct MqttClient {
    child: Child,
    stdin: ChildStdin,
    events: mpsc::UnboundedReceiver<Value>,
    /// Every event seen, for failure messages.
    pub seen: Vec<Value>,
}

impl MqttClient {
    /// Starts a client with `opts` (see the head of each client file).
    pub async fn start(lib: Lib, opts: Value) -> Self {
        let dir = clients_dir();
        let mut cmd = match lib {
            Lib::MqttJs => {
                assert!(
                    dir.join("node_modules/mqtt").is_dir(),
                    "mqtt.js not installed: run `npm ci` in {} (.ci/run does)",
                    dir.display()
                );
                let mut c = Command::new("node");
                c.arg(dir.join("mqttjs.mjs"));
                c
            }
            Lib::Paho => {
                let python = dir.join(".venv/bin/python");
                assert!(
                    python.is_file(),
                    "Paho not installed: run `python3 -m venv .venv && .venv/bin/pip install -r \
                     requirements.txt` in {} (.ci/run does)",
                    dir.display()
                );
                let mut c = Command::new(python);
                c.arg(dir.join("paho_client.py"));
                c
            }
        };
        let mut child = cmd
            .arg(opts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start the {lib:?} client: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "stdout", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut c = Self {
            child,
            stdin,
            events,
            seen: Vec::new(),
        };
        c.expect("ready").await;
        c
    }

    /// The next event, whatever it is.
    pub async fn next(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.events.recv()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                v
            }
            Ok(None) => panic!("the client exited; events: {:#?}", self.seen),
            Err(_) => panic!("no event within {WAIT:?}; events: {:#?}", self.seen),
        }
    }

    /// The next event named `event`, skipping others.
    pub async fn expect(&mut self, event: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["event"] == event {
                return v;
            }
        }
    }

    /// The next `message` event.
    pub async fn message(&mut self) -> Value {
        self.expect("message").await
    }

    /// Sends a command.
    pub async fn send(&mut self, cmd: Value) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("client stdin");
    }

    /// Subscribes to `topics` (`{topic: qos}`) and returns the `suback` event.
    pub async fn subscribe(&mut self, topics: Value) -> Value {
        self.send(serde_json::json!({ "subscribe": topics })).await;
        self.expect("suback").await
    }

    /// Ends the client cleanly (MQTT `DISCONNECT`).
    pub async fn end(mut self) {
        self.send(serde_json::json!({"end": true})).await;
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}
