//! A stand-in Kubernetes API server on 127.0.0.1: it answers each request with the next
//! recorded response of its script and records what it was sent, so that tests assert the
//! method, path, query, content type and body the CLI used. The CLI reaches it through a real
//! kubeconfig file, so the config loading path is the one users run.

#![allow(dead_code, reason = "each test binary uses its own part")]

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use waypoint_cli::{Command, Error, execute};

/// One scripted exchange: the request expected, and the recorded answer.
pub struct Exchange {
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub body: String,
}

/// Expects `method path`, answers `status` with the fixture file `fixture`.
pub fn expect(method: &'static str, path: &str, status: u16, fixture: &str) -> Exchange {
    let file = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let body = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    Exchange {
        method,
        path: path.to_owned(),
        status,
        body,
    }
}

/// What the CLI sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: String,
}

impl Seen {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("body {:?}: {e}", self.body))
    }
}

pub struct ApiServer {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    left: Arc<Mutex<VecDeque<Exchange>>>,
    kubeconfig: PathBuf,
}

impl ApiServer {
    /// Starts the server; `context_namespace` goes into the kubeconfig's context.
    pub async fn start(script: Vec<Exchange>, context_namespace: Option<&str>) -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let left = Arc::new(Mutex::new(VecDeque::from(script)));
        let (seen2, left2) = (seen.clone(), left.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, left) = (seen2.clone(), left2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, seen.clone(), left.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let kubeconfig = write_kubeconfig(&url, port, context_namespace);
        ApiServer {
            url,
            seen,
            left,
            kubeconfig,
        }
    }

    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.display().to_string()
    }

    /// The requests received, after checking that the whole script was played.
    pub fn seen(&self) -> Vec<Seen> {
        let left = self.left.lock().expect("lock").len();
        assert_eq!(left, 0, "{left} scripted responses were never requested");
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    left: Arc<Mutex<VecDeque<Exchange>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        query,
        content_type,
        body,
    });
    let next = left.lock().expect("lock").pop_front();
    let (status, body) = match next {
        Some(ex) if ex.method == method && ex.path == path => (ex.status, ex.body),
        Some(ex) => (
            500,
            format!(
                "mock: expected {} {}, got {method} {path}",
                ex.method, ex.path
            ),
        ),
        None => (500, format!("mock: unexpected {method} {path}")),
    };
    let content_type = if body.trim_start().starts_with('{') {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        content_type.parse().expect("ct"),
    );
    Ok(resp)
}

fn write_kubeconfig(url: &str, port: u16, namespace: Option<&str>) -> PathBuf {
    let ns = namespace
        .map(|n| format!("\n    namespace: {n}"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: recorded
  cluster:
    server: {url}
contexts:
- name: recorded
  context:
    cluster: recorded
    user: tester{ns}
current-context: recorded
users:
- name: tester
  user:
    token: not-a-real-token
"
    );
    let path = std::env::temp_dir().join(format!(
        "waypoint-cli-{}-{port}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// Parses `waypoint <args>` as the binary would.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

/// Runs a command line; returns its result and what it printed.
pub async fn run(args: &[&str]) -> (Result<(), Error>, String) {
    let cli = Cli::try_parse_from(std::iter::once("waypoint").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut out = Vec::new();
    let result = execute(cli.cmd, &mut out).await;
    (result, String::from_utf8(out).expect("utf-8 output"))
}

/// Renders an error with its causes, as `anyhow`'s `{:#}` would.
pub fn chain(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
