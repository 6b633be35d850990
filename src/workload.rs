//! The IoT Edge security daemon's workload API: on a device the module holds no key; it asks the
//! daemon, over a unix socket, to sign its SAS tokens and for the CA bundle that edgeHub's server
//! certificate chains to (contract §4).
//!
//! - `POST /modules/{moduleId}/genid/{generationId}/sign?api-version={v}` with
//!   `{"keyId":"primary","algo":"HMACSHA256","data":"<base64 of the string to sign>"}` answers
//!   `{"digest":"<base64 HMAC-SHA256>"}`;
//! - `GET /trust-bundle?api-version={v}` answers `{"certificate":"<PEM chain>"}`.
//!
//! Requests and responses are built and read by pure functions; the I/O is hyper's HTTP/1.1
//! client over a unix socket (`unix:///path`) or TCP (`http://host:port`), each request with a
//! timeout and retried with back-off, because the daemon can be slow, restarting or down.

use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use log::warn;
use serde_json::Value;

use crate::topic::quote;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call (the first and the retries).
const ATTEMPTS: u32 = 4;

/// Where the workload API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadUri {
    Unix(PathBuf),
    Http { host: String, port: u16 },
}

/// Parses `IOTEDGE_WORKLOADURI`: `unix:///var/run/iotedge/workload.sock` or `http://host:port`.
pub fn parse_uri(uri: &str) -> Result<WorkloadUri, String> {
    if let Some(path) = uri.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!("{uri:?}: a unix URI needs an absolute path (unix:///path)"));
        }
        return Ok(WorkloadUri::Unix(path.into()));
    }
    if let Some(rest) = uri.strip_prefix("http://") {
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| format!("{uri:?}: invalid port {p:?}"))?),
            None => (rest, 80),
        };
        if host.is_empty() {
            return Err(format!("{uri:?}: no host"));
        }
        return Ok(WorkloadUri::Http { host: host.to_string(), port });
    }
    Err(format!("{uri:?} must start with unix:// or http://"))
}

/// The module's handle on the workload API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub uri: WorkloadUri,
    pub module_id: String,
    pub generation_id: String,
    pub api_version: String,
}

/// A failed workload call, with what a user can act on.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkloadError {
    /// The daemon could not be reached or did not answer in time.
    Unreachable(String),
    /// It answered with an error status.
    Status(u16, String),
    /// It answered 200 with a body that is not what the API promises.
    BadResponse(String),
}

impl std::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkloadError::Unreachable(e) => write!(f, "workload API unreachable: {e}"),
            WorkloadError::Status(s, body) => write!(f, "workload API answered {s}: {body}"),
            WorkloadError::BadResponse(e) => write!(f, "workload API answered something unexpected: {e}"),
        }
    }
}

impl Workload {
    /// The path and query of a sign request.
    pub fn sign_path(&self) -> String {
        format!(
            "/modules/{}/genid/{}/sign?api-version={}",
            quote(&self.module_id),
            quote(&self.generation_id),
            quote(&self.api_version)
        )
    }

    /// The body of a sign request for `data`.
    pub fn sign_body(data: &[u8]) -> String {
        serde_json::json!({"keyId": "primary", "algo": "HMACSHA256", "data": BASE64.encode(data)}).to_string()
    }

    /// The path and query of the trust-bundle request.
    pub fn trust_bundle_path(&self) -> String {
        format!("/trust-bundle?api-version={}", quote(&self.api_version))
    }

    /// Signs `data` with the module's identity key: the base64 HMAC-SHA256.
    pub async fn sign(&self, data: &[u8]) -> Result<String, WorkloadError> {
        let body = Workload::sign_body(data);
        let response = self.call("POST", &self.sign_path(), Some(body)).await?;
        parse_digest(&response)
    }

    /// The PEM bundle of the CAs that edgeHub's certificate chains to.
    pub async fn trust_bundle(&self) -> Result<String, WorkloadError> {
        let response = self.call("GET", &self.trust_bundle_path(), None).await?;
        parse_trust_bundle(&response)
    }

    /// One call, retried with back-off on failures that may pass.
    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Bytes, WorkloadError> {
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            let result = match tokio::time::timeout(TIMEOUT, self.request(method, path, body.clone())).await {
                Ok(r) => r,
                Err(_) => Err(WorkloadError::Unreachable(format!("no answer within {} s", TIMEOUT.as_secs()))),
            };
            let retry = match &result {
                Ok(_) => false,
                Err(WorkloadError::Status(s, _)) => *s >= 500 || *s == 429,
                Err(_) => true,
            };
            if !retry || attempt >= ATTEMPTS {
                return result;
            }
            if let Err(e) = &result {
                warn!(
                    "{method} {}: {e}; retrying in {:.1} s",
                    path.split('?').next().unwrap_or(path),
                    delay.as_secs_f64()
                );
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
            attempt += 1;
        }
    }

    async fn request(&self, method: &str, path: &str, body: Option<String>) -> Result<Bytes, WorkloadError> {
        let unreachable = |e: &dyn std::fmt::Display| WorkloadError::Unreachable(e.to_string());
        let (mut sender, host) = match &self.uri {
            WorkloadUri::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| WorkloadError::Unreachable(format!("{}: {e}", socket.display())))?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
                tokio::spawn(conn);
                (sender, "localhost".to_string())
            }
            WorkloadUri::Http { host, port } => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| WorkloadError::Unreachable(format!("{host}:{port}: {e}")))?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
                tokio::spawn(conn);
                (sender, format!("{host}:{port}"))
            }
        };
        let mut request = hyper::Request::builder().method(method).uri(path).header("Host", host);
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| WorkloadError::BadResponse(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| unreachable(&e))?.to_bytes();
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(WorkloadError::Status(status, text));
        }
        Ok(body)
    }
}

/// Reads `{"digest":"<base64>"}`.
pub fn parse_digest(body: &[u8]) -> Result<String, WorkloadError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| WorkloadError::BadResponse(format!("sign: {e}")))?;
    let digest = v
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| WorkloadError::BadResponse("sign: no \"digest\" string".into()))?;
    match BASE64.decode(digest) {
        Ok(d) if d.len() == 32 => Ok(digest.to_string()),
        _ => Err(WorkloadError::BadResponse("sign: \"digest\" is not a base64 HMAC-SHA256".into())),
    }
}

/// Reads `{"certificate":"<PEM>"}`.
pub fn parse_trust_bundle(body: &[u8]) -> Result<String, WorkloadError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| WorkloadError::BadResponse(format!("trust bundle: {e}")))?;
    match v.get("certificate").and_then(Value::as_str) {
        Some(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => Ok(pem.to_string()),
        _ => Err(WorkloadError::BadResponse("trust bundle: no PEM \"certificate\"".into())),
    }
}
