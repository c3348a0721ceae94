//! A real headless Chromium (Debian's `chromium` and `chromium-driver`), driven by Selenium from
//! Python (`tests/clients/console_browser.py`): commands as JSON lines on stdin, one JSON answer
//! each on stdout.
//!
//! ```ignore
//! let mut b = Browser::start().await;
//! b.run(json!({"cmd": "goto", "url": url})).await;
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::WAIT;
use crate::mqtt::clients_dir;

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` package puts the driver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running browser.
pub struct Browser {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// `name` as given by `HERALD_TEST_<VAR>`, else `default`.
fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

impl Browser {
    /// Starts Chromium; fails naming what is missing (the binaries, or Selenium).
    pub async fn start() -> Self {
        let chromium = binary("HERALD_TEST_CHROMIUM", CHROMIUM);
        let driver = binary("HERALD_TEST_CHROMEDRIVER", CHROMEDRIVER);
        for (path, package) in [(&chromium, "chromium"), (&driver, "chromium-driver")] {
            assert!(
                path.is_file(),
                "{} not found: install Debian's `{package}` package (chromium and \
                 chromium-driver; .ci/run does), or set HERALD_TEST_CHROMIUM / \
                 HERALD_TEST_CHROMEDRIVER",
                path.display()
            );
        }
        let dir = clients_dir();
        let python = dir.join(".venv/bin/python");
        assert!(
            python.is_file() && has_selenium(&dir),
            "Selenium not installed: run `python3 -m venv .venv && .venv/bin/pip install -r \
             requirements.txt` in {} (.ci/run does)",
            dir.display()
        );
        let opts = json!({"chromium": chromium, "chromedriver": driver});
        let mut child = Command::new(python)
            .arg(dir.join("console_browser.py"))
            .arg(opts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start chromium through selenium: {e}"));
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut b = Self {
            _child: child,
            stdin,
            stdout,
        };
        let ready = b.answer().await;
        assert_eq!(ready["event"], "ready", "chromium did not start: {ready}");
        b
    }

    async fn answer(&mut self) -> Value {
        // Starting Chromium on a loaded machine takes a while: twice the usual wait.
        match tokio::time::timeout(WAIT * 2, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => {
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("browser said {line:?}: {e}"))
            }
            Ok(Ok(None)) => panic!("the browser driver exited (its stderr is above)"),
            Ok(Err(e)) => panic!("browser driver output: {e}"),
            Err(_) => panic!("no answer from the browser within {:?}", WAIT * 2),
        }
    }

    /// Runs a command (see `console_browser.py`) and returns its answer; fails the test on an
    /// `error` answer.
    pub async fn run(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("browser stdin");
        let v = self.answer().await;
        assert_ne!(v["event"], "error", "{cmd}: {}", v["message"]);
        v
    }

    /// Waits until the first element matching `css` shows `text`; returns its whole text.
    pub async fn wait_text(&mut self, css: &str, text: &str) -> String {
        let v = self
            .run(json!({"cmd": "wait_text", "css": css, "text": text, "timeout": WAIT.as_secs()}))
            .await;
        v["text"].as_str().unwrap_or_default().to_string()
    }

    /// Clicks the first element matching `css` (and accepts the confirmation it may ask).
    pub async fn click(&mut self, css: &str) {
        self.run(json!({"cmd": "click", "css": css})).await;
    }

    /// Types `text` into the field matching `css`, replacing what it held.
    pub async fn type_into(&mut self, css: &str, text: &str) {
        self.run(json!({"cmd": "type", "css": css, "text": text}))
            .await;
    }
}

fn has_selenium(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(".venv/lib"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|python| python.path().join("site-packages/selenium").is_dir())
}
