//! Real servers for the notification tests: an HTTP receiver of webhook calls (axum, in the
//! test) that verifies signatures and misbehaves on request, and an SMTP server (Debian's
//! python3-aiosmtpd, writing a Maildir) whose mails the tests parse.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// One call the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub body: Value,
    /// The signature header matched an HMAC-SHA256 of `"{timestamp}.{body}"` with the secret.
    pub signed: bool,
    pub delivery_header: String,
    /// What the receiver answered.
    pub status: u16,
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    /// `/flaky` answers 500 to this many calls before answering 200.
    flaky_failures: AtomicUsize,
    /// Bytes of `/huge`'s body the receiver managed to hand to the connection.
    huge_sent: AtomicUsize,
    secret: Mutex<String>,
}

/// An HTTP server standing in for a customer's webhook endpoint. Paths:
/// `/ok` 200; `/flaky` 500 for the first N calls, then 200; `/down` always 503; `/hang` never
/// answers (within a minute); `/redirect` 302 to itself; `/huge` 200 with a 64 MiB body.
pub struct Receiver {
    pub base: String,
    shared: Arc<Shared>,
}

/// Size of `/huge`'s body.
pub const HUGE: usize = 64 * 1024 * 1024;

impl Receiver {
    pub async fn start(secret: &str) -> Self {
        let shared = Arc::new(Shared::default());
        *shared.secret.lock().unwrap() = secret.to_owned();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            shared,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/flaky` fails the next `n` calls.
    pub fn fail_next(&self, n: usize) {
        self.shared.flaky_failures.store(n, Ordering::SeqCst);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().unwrap().clone()
    }

    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    pub fn huge_sent(&self) -> usize {
        self.shared.huge_sent.load(Ordering::SeqCst)
    }
}

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let (Some(timestamp), Some(signature)) = (
        headers
            .get("x-switchboard-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-switchboard-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Some(hex_mac) = signature.strip_prefix("v1=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let status = match path.as_str() {
        "/flaky" => {
            let failed = shared
                .flaky_failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failed { 500 } else { 200 }
        }
        "/down" => 503,
        "/redirect" => 302,
        _ => 200,
    };
    let secret = shared.secret.lock().unwrap().clone();
    shared.hits.lock().unwrap().push(Hit {
        path: path.clone(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed: verify(&secret, &headers, &body),
        delivery_header: headers
            .get("x-switchboard-delivery")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        status,
    });
    match path.as_str() {
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        "/redirect" => (StatusCode::FOUND, [("location", "/redirect")]).into_response(),
        "/huge" => {
            let shared = shared.clone();
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::unfold(0usize, move |sent| {
                let (shared, chunk) = (shared.clone(), chunk.clone());
                async move {
                    if sent >= HUGE {
                        return None;
                    }
                    shared.huge_sent.fetch_add(chunk.len(), Ordering::SeqCst);
                    Some((Ok::<_, std::io::Error>(chunk.clone()), sent + chunk.len()))
                }
            });
            Response::new(Body::from_stream(stream))
        }
        _ => StatusCode::from_u16(status).unwrap().into_response(),
    }
}

/// The Python interpreter that has aiosmtpd (Debian's, not a pyenv or venv one on PATH).
fn python() -> String {
    std::env::var("SWITCHBOARD_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// A real SMTP server (aiosmtpd) storing what it receives in a Maildir.
pub struct SmtpSink {
    pub url: String,
    maildir: PathBuf,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("mail");
        let port = free_port();
        let child = std::process::Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("{} cannot start ({err}): {FIX}", python()));
        let mut sink = Self {
            url: format!("smtp://127.0.0.1:{port}"),
            maildir,
            child,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return sink;
            }
            if let Ok(Some(status)) = sink.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = sink.child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!("aiosmtpd exited ({status}): {stderr}\n{FIX}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not listen: {FIX}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The raw mails received so far.
    pub fn mails(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect()
    }
}

const FIX: &str = "the e-mail tests need Debian's python3-aiosmtpd: run ./scripts/test (it \
                   installs it) or `apt-get install -y python3-aiosmtpd`";

/// A TCP port nothing listens on (just released by the system).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
