//! Headless Chromium driven over its DevTools protocol: JSON commands over one
//! WebSocket, with replies matched to commands by id. Enough to open a page, wait
//! for what its script renders, type into a field and click a button as a person
//! would (mouse events at the element's position, so a covered, hidden or disabled
//! button is not clicked).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Reaper, TempDir};

/// The longest one DevTools command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(30);

/// A headless Chromium process and the DevTools connection to it; the process is
/// killed by PID and its profile removed when dropped.
pub(crate) struct Browser {
    /// The connection to the browser target.
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The id of the next command.
    next_id: u64,
    /// Killed on drop (before the profile goes).
    _process: Reaper,
    /// A fresh profile directory.
    _profile: TempDir,
}

impl Browser {
    /// Starts `binary` headless with a fresh profile and connects to it. Chromium
    /// prints its DevTools address on stderr; waits at most 30 s for it.
    pub(crate) async fn launch(binary: &Path) -> Browser {
        let profile = TempDir::new("chromium-profile");
        let mut child = Command::new(binary)
            .args(super::chromium::HEADLESS)
            .args([
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.0.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let process = Reaper(child);
        let (found, address) = std::sync::mpsc::channel();
        // Reads on after the address too, so Chromium never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = found.send(line[at..].trim().to_owned());
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || address.recv_timeout(COMMAND_LIMIT))
            .await
            .unwrap()
            .expect("chromium printed its DevTools address within 30 s");
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DevTools at {url}: {e}"));
        Browser {
            socket,
            next_id: 1,
            _process: process,
            _profile: profile,
        }
    }

    /// Sends `method` with `params` (to the page of `session`, else to the browser)
    /// and returns its result; events that arrive meanwhile are dropped. Panics on a
    /// protocol error or after 30 s.
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        let reply = async {
            loop {
                let frame = self
                    .socket
                    .next()
                    .await
                    .unwrap_or_else(|| panic!("DevTools closed during {method}"))
                    .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
                let Message::Text(text) = frame else { continue };
                let reply: Value = serde_json::from_str(&text).expect("DevTools sends JSON");
                if reply["id"] == id {
                    return reply;
                }
            }
        };
        let reply = tokio::time::timeout(COMMAND_LIMIT, reply)
            .await
            .unwrap_or_else(|_| panic!("DevTools {method} took over {COMMAND_LIMIT:?}"));
        if let Some(error) = reply.get("error") {
            panic!("DevTools {method} failed: {error}");
        }
        reply["result"].clone()
    }

    /// Opens `url` in a new tab and returns it.
    pub(crate) async fn open(&mut self, url: &str) -> Page<'_> {
        let target = self
            .command(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .command(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("a DevTools session id")
            .to_owned();
        Page {
            browser: self,
            session,
        }
    }
}

/// One tab of a [`Browser`].
pub(crate) struct Page<'a> {
    /// The browser it is in.
    browser: &'a mut Browser,
    /// Its DevTools session.
    session: String,
}

impl Page<'_> {
    async fn command(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.browser.command(Some(&session), method, params).await
    }

    /// The value of the JavaScript `expression` in the page (awaited if a promise);
    /// panics if it throws.
    pub(crate) async fn evaluate(&mut self, expression: &str) -> Value {
        let result = self
            .command(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(thrown) = result.get("exceptionDetails") {
            panic!("{expression} threw in the page: {thrown}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` every 100 ms until it is truthy; returns that value.
    /// Panics, naming `what`, after `limit`.
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        limit: Duration,
    ) -> Value {
        let started = Instant::now();
        loop {
            let value = self.evaluate(expression).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(_) | Value::Object(_) => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > limit {
                let body = self.evaluate("document.body.innerText").await;
                panic!("the page never showed {what} within {limit:?}; it shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element `expression` evaluates to, with the mouse at its centre:
    /// the click lands on whatever the page shows there, as a person's would.
    pub(crate) async fn click(&mut self, expression: &str) {
        let centre = self
            .evaluate(&format!(
                "(() => {{ const e = {expression}; if (!e) return null; \
                 e.scrollIntoView({{ block: 'center' }}); const r = e.getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ))
            .await;
        let [x, y] = [&centre[0], &centre[1]].map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("nothing to click: {expression}"))
        });
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    /// Clicks the field `expression` evaluates to and types `text` into it.
    pub(crate) async fn type_into(&mut self, expression: &str, text: &str) {
        self.click(expression).await;
        self.command("Input.insertText", json!({ "text": text }))
            .await;
    }
}
