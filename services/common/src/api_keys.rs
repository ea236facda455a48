//! API keys for the services' request APIs (`--api-keys-file`): `Authorization: Bearer <key>` checked
//! against the keys of a file that is re-read while the service runs, so keys rotate without a restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::MethodRouter;
use clap::Args;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::http::json_error;

/// Shortest key accepted: a guessable key is worse than none, since it looks like protection.
pub const MIN_KEY_CHARS: usize = 16;

/// How often the keys file is read again; a rotated key takes effect within this time.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Who may call the service's request API.
#[derive(Args, Clone, Debug, Default)]
pub struct ApiAuthArgs {
    /// File of API keys, one per line (blank lines and lines starting with `#` are ignored; at least
    /// 16 printable ASCII characters, no spaces). When set, the service's POST API answers 401 unless
    /// the request carries `Authorization: Bearer <one of the keys>`; /healthz, /readyz, /metrics and
    /// /openapi.json stay open. The file is read again every 5 s: add the new key, move the clients,
    /// then remove the old one, with no restart. Unset: the API is open (keep it behind an
    /// authenticating ingress).
    #[arg(
        long = "api-keys-file",
        env = "SENTIFLOW_API_KEYS_FILE",
        value_name = "PATH"
    )]
    pub api_keys_file: Option<PathBuf>,
}

impl ApiAuthArgs {
    /// Loads the keys for `service` (or says at start-up, loudly when the address is reachable from
    /// other hosts, that its API is open).
    ///
    /// # Errors
    /// The file cannot be read, holds an invalid key or no key at all.
    pub fn load(
        &self,
        service: &'static str,
        http_addr: SocketAddr,
    ) -> Result<Option<Arc<ApiKeys>>, ApiKeysError> {
        match &self.api_keys_file {
            Some(path) => {
                let keys = ApiKeys::load(service, path)?;
                tracing::info!(
                    path = %path.display(),
                    keys = keys.key_count(),
                    "the request API requires an API key (Authorization: Bearer)"
                );
                Ok(Some(keys))
            }
            None => {
                if http_addr.ip().is_loopback() {
                    tracing::info!(%http_addr, "the request API is open (no --api-keys-file)");
                } else {
                    tracing::warn!(
                        %http_addr,
                        "the request API is open to anyone who can reach this address: set \
                         --api-keys-file or keep it behind an authenticating ingress"
                    );
                }
                Ok(None)
            }
        }
    }
}

/// Why a keys file was refused (at start-up: the service does not start; on a reload: the keys
/// already loaded stay in force).
#[derive(Debug, thiserror::Error)]
pub enum ApiKeysError {
    /// The file cannot be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a usable key (the key itself is never shown).
    #[error("API keys file {path}, line {line}: {reason}")]
    InvalidKey {
        /// The file.
        path: PathBuf,
        /// One-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No key at all: every request would be refused, which is never what was meant.
    #[error(
        "API keys file {path} holds no key (one key per line); to leave the API open, unset --api-keys-file"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The keys in force: only their SHA-256 digests are kept (the file's text is dropped once parsed), so
/// a presented key is compared in constant time against fixed-length values.
#[derive(Debug)]
pub struct ApiKeys {
    service: &'static str,
    path: PathBuf,
    loaded: RwLock<LoadedKeys>,
}

#[derive(Debug)]
struct LoadedKeys {
    file_digest: [u8; 32],
    key_digests: Vec<[u8; 32]>,
    /// The file with `file_digest` was refused (the keys are those of an earlier file).
    file_refused: bool,
}

/// Why a request was refused, the `error_kind` of its 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    MissingApiKey,
    /// A header that is not `Bearer <key>` or a key not in the file.
    InvalidApiKey,
}

impl AuthFailure {
    /// The metric label and the `error` field of the response.
    pub fn kind(self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
        }
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal digests, looking at every byte whatever the first difference.
fn digests_equal(left: &[u8; 32], right: &[u8; 32]) -> bool {
    left.iter()
        .zip(right)
        .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The keys of a file's text, as digests, without duplicates.
fn parse_keys(path: &Path, text: &str) -> Result<Vec<[u8; 32]>, ApiKeysError> {
    let mut digests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let key = line.trim();
        if key.is_empty() || key.starts_with('#') {
            continue;
        }
        let invalid = |reason| ApiKeysError::InvalidKey {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(invalid(
                "a key must be printable ASCII without spaces (it travels in an HTTP header)",
            ));
        }
        if key.len() < MIN_KEY_CHARS {
            return Err(invalid(
                "a key must be at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        let digest = sha256(key.as_bytes());
        if !digests.contains(&digest) {
            digests.push(digest);
        }
    }
    if digests.is_empty() {
        return Err(ApiKeysError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(digests)
}

fn read_keys_file(path: &Path) -> Result<(String, [u8; 32]), ApiKeysError> {
    let text = std::fs::read_to_string(path).map_err(|source| ApiKeysError::Read {
        path: path.to_owned(),
        source,
    })?;
    let digest = sha256(text.as_bytes());
    Ok((text, digest))
}

impl ApiKeys {
    /// Reads the keys of `path` for `service`'s API.
    ///
    /// # Errors
    /// The file cannot be read, holds an invalid key or no key.
    pub fn load(service: &'static str, path: &Path) -> Result<Arc<Self>, ApiKeysError> {
        let (text, file_digest) = read_keys_file(path)?;
        let key_digests = parse_keys(path, &text)?;
        // The recorder must exist before the first gauge is set, or the value is lost.
        crate::telemetry::prometheus();
        metrics::gauge!(format!("sentiflow_{}_api_keys", service)).set(key_digests.len() as f64);
        metrics::gauge!(format!("sentiflow_{}_api_keys_file_ok", service)).set(1.0);
        // The error counter exists from the start, so the first refusal is an increase.
        metrics::counter!(format!(
            "sentiflow_{}_api_keys_reload_errors_total",
            service
        ))
        .increment(0);
        Ok(Arc::new(Self {
            service,
            path: path.to_owned(),
            loaded: RwLock::new(LoadedKeys {
                file_digest,
                key_digests,
                file_refused: false,
            }),
        }))
    }

    /// How many distinct keys are in force.
    pub fn key_count(&self) -> usize {
        self.loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .key_digests
            .len()
    }

    /// Reads the file again; returns whether the keys changed. A file that cannot be used (missing,
    /// empty, a bad line) leaves the keys in force as they were; replace the file atomically (write
    /// a temporary file, then rename it) so that no read sees a valid part of it.
    ///
    /// # Errors
    /// The file cannot be read, holds an invalid key or no key.
    pub fn reload(&self) -> Result<bool, ApiKeysError> {
        let (text, file_digest) = read_keys_file(&self.path).inspect_err(|_| {
            let mut loaded = self
                .loaded
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Whatever file comes back is read again, even one equal to the last refused.
            loaded.file_digest = [0; 32];
            loaded.file_refused = true;
        })?;
        let unchanged = |loaded: &LoadedKeys| loaded.file_digest == file_digest;
        if unchanged(
            &self
                .loaded
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ) {
            return Ok(false);
        }
        let key_digests = match parse_keys(&self.path, &text) {
            Ok(digests) => digests,
            Err(error) => {
                // Remember the bad file so that it is reported once, not every few seconds.
                let mut loaded = self
                    .loaded
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                loaded.file_digest = file_digest;
                loaded.file_refused = true;
                return Err(error);
            }
        };
        let count = key_digests.len();
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = LoadedKeys {
            file_digest,
            key_digests,
            file_refused: false,
        };
        metrics::gauge!(format!("sentiflow_{}_api_keys", self.service)).set(count as f64);
        Ok(true)
    }

    /// Whether the keys in force are those of the file as it is now (false while a file that cannot
    /// be used sits there, or after it could not be read).
    pub fn file_ok(&self) -> bool {
        !self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .file_refused
    }

    /// Whether `presented` is one of the keys in force.
    pub fn accepts(&self, presented: &str) -> bool {
        let digest = sha256(presented.as_bytes());
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every key is compared, so the time taken does not say which one (if any) matched.
        loaded
            .key_digests
            .iter()
            .fold(false, |found, key| digests_equal(key, &digest) | found)
    }

    /// Checks a request's `Authorization: Bearer <key>` header.
    ///
    /// # Errors
    /// The header is missing, not a bearer token, or its key is not in force.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthFailure::MissingApiKey)?;
        let value = value.to_str().map_err(|_| AuthFailure::InvalidApiKey)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthFailure::InvalidApiKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") || !self.accepts(token.trim()) {
            return Err(AuthFailure::InvalidApiKey);
        }
        Ok(())
    }

    /// Middleware: a request without a key in force is answered 401 before anything else happens to it
    /// (it takes no request slot and its body is not read).
    pub async fn require_key(self: Arc<Self>, request: Request, next: Next) -> Response {
        let Err(failure) = self.check(request.headers()) else {
            return next.run(request).await;
        };
        metrics::counter!(format!("sentiflow_{}_http_requests_total", self.service), "status" => "401")
            .increment(1);
        let message = match failure {
            AuthFailure::MissingApiKey => "this API needs `Authorization: Bearer <API key>`",
            AuthFailure::InvalidApiKey => {
                "the Authorization header is not `Bearer <API key>` with a key in force"
            }
        };
        let mut response = json_error(
            self.service,
            StatusCode::UNAUTHORIZED,
            failure.kind(),
            message,
        );
        let challenge = match failure {
            AuthFailure::MissingApiKey => "Bearer realm=\"sentiflow\"",
            AuthFailure::InvalidApiKey => "Bearer realm=\"sentiflow\", error=\"invalid_token\"",
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        response
    }

    /// Reads the file again every [`RELOAD_INTERVAL`] until `shutdown`, logging what changed; a
    /// file that cannot be used is logged and counted in `sentiflow_<service>_api_keys_reload_errors_total`.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let keys = Arc::clone(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(RELOAD_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            // A file that stays missing or bad is reported once, not every few seconds.
            let mut last_refusal: Option<String> = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                let reloaded = {
                    let keys = Arc::clone(&keys);
                    tokio::task::spawn_blocking(move || keys.reload()).await
                };
                let file_ok = format!("sentiflow_{}_api_keys_file_ok", keys.service);
                match reloaded {
                    Ok(Ok(changed)) => {
                        let file_ok_now = keys.file_ok();
                        metrics::gauge!(file_ok).set(if file_ok_now { 1.0 } else { 0.0 });
                        if file_ok_now {
                            last_refusal = None;
                        }
                        if changed {
                            tracing::info!(
                                path = %keys.path.display(),
                                keys = keys.key_count(),
                                "API keys reloaded"
                            );
                        }
                    }
                    Ok(Err(error)) => {
                        metrics::gauge!(file_ok).set(0.0);
                        let refusal = error.to_string();
                        if last_refusal.as_ref() != Some(&refusal) {
                            metrics::counter!(format!(
                                "sentiflow_{}_api_keys_reload_errors_total",
                                keys.service
                            ))
                            .increment(1);
                            tracing::error!(%error, "API keys file refused; the keys in force stay");
                            last_refusal = Some(refusal);
                        }
                    }
                    Err(join_error) => tracing::error!(%join_error, "API keys reload failed"),
                }
            }
        })
    }
}

/// `route` guarded by `keys` when there are any (the API is open otherwise).
pub fn protect<S>(route: MethodRouter<S>, keys: Option<Arc<ApiKeys>>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    match keys {
        Some(keys) => route.route_layer(middleware::from_fn(move |request, next| {
            Arc::clone(&keys).require_key(request, next)
        })),
        None => route,
    }
}

/// Marks the POST operation at `path` of an OpenAPI document as needing a bearer key, with its 401
/// answer (a service started without keys leaves its document as it is).
pub fn document_in_openapi(document: &mut serde_json::Value, path: &str) {
    let operation = &mut document["paths"][path]["post"];
    operation["security"] = serde_json::json!([{"apiKey": []}]);
    operation["responses"]["401"] = serde_json::json!({
        "description": "missing_api_key or invalid_api_key: send `Authorization: Bearer <API key>` with a key of --api-keys-file",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    });
    document["components"]["securitySchemes"]["apiKey"] = serde_json::json!({
        "type": "http",
        "scheme": "bearer",
        "description": "A key of the service's --api-keys-file"
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a1b2c3d4e5f6a7b8c9d0";
    const KEY_B: &str = "ffffffffffffffffffffffffffffffff";

    fn keys_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys");
        std::fs::write(&path, text).expect("write keys");
        (dir, path)
    }

    fn bearer(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(value).expect("header value"),
        );
        headers
    }

    #[test]
    fn keys_are_read_one_per_line_with_comments_blank_lines_and_duplicates() {
        let (_dir, path) = keys_file(&format!(
            "# producers\n\n  {KEY_A}  \r\n{KEY_B}\n{KEY_A}\n   # old key removed\n"
        ));
        let keys = ApiKeys::load("test", &path).expect("valid file");
        assert_eq!(keys.key_count(), 2);
        assert!(keys.accepts(KEY_A));
        assert!(keys.accepts(KEY_B));
        assert!(!keys.accepts(&KEY_A[..KEY_A.len() - 1]));
        assert!(!keys.accepts(""));
    }

    #[test]
    fn short_spaced_or_missing_keys_are_refused_without_showing_them() {
        for (text, expected) in [
            (
                "short-key\n",
                "line 1: a key must be at least 16 characters",
            ),
            (
                "# c\nthis key has spaces in it\n",
                "line 2: a key must be printable ASCII",
            ),
            (
                "ключключключключключ\n",
                "line 1: a key must be printable ASCII",
            ),
            ("# nothing\n\n", "holds no key"),
            ("", "holds no key"),
        ] {
            let (_dir, path) = keys_file(text);
            let message = ApiKeys::load("test", &path)
                .expect_err("invalid file")
                .to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains("short-key") && !message.contains("spaces in"));
        }
        let missing = ApiKeys::load("test", Path::new("/nonexistent/sentiflow/keys"))
            .expect_err("missing file");
        assert!(matches!(missing, ApiKeysError::Read { .. }), "{missing}");
    }

    #[test]
    fn only_a_bearer_header_with_a_key_in_force_passes() {
        let (_dir, path) = keys_file(&format!("{KEY_A}\n"));
        let keys = ApiKeys::load("test", &path).expect("valid file");
        assert_eq!(
            keys.check(&HeaderMap::new()),
            Err(AuthFailure::MissingApiKey)
        );
        assert_eq!(keys.check(&bearer(&format!("Bearer {KEY_A}"))), Ok(()));
        assert_eq!(keys.check(&bearer(&format!("bearer  {KEY_A} "))), Ok(()));
        for refused in [
            format!("Basic {KEY_A}"),
            KEY_A.to_owned(),
            format!("Bearer {KEY_B}"),
            format!("Bearer {KEY_A}x"),
            "Bearer ".to_owned(),
        ] {
            assert_eq!(
                keys.check(&bearer(&refused)),
                Err(AuthFailure::InvalidApiKey),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_reload_rotates_keys_and_a_bad_file_keeps_those_in_force() {
        let (_dir, path) = keys_file(&format!("{KEY_A}\n"));
        let keys = ApiKeys::load("test", &path).expect("valid file");
        assert!(!keys.reload().expect("same file"), "nothing changed");

        std::fs::write(&path, format!("{KEY_A}\n{KEY_B}\n")).expect("add key");
        assert!(keys.reload().expect("valid file"));
        assert!(keys.accepts(KEY_A) && keys.accepts(KEY_B));

        std::fs::write(&path, format!("{KEY_B}\n")).expect("retire key");
        assert!(keys.reload().expect("valid file"));
        assert!(!keys.accepts(KEY_A) && keys.accepts(KEY_B));

        // A broken or emptied file is refused once, and the keys in force stay.
        assert!(keys.file_ok());
        std::fs::write(&path, "ffff").expect("truncated");
        assert!(keys.reload().is_err());
        assert!(!keys.reload().expect("the same bad file again is not news"));
        assert!(!keys.file_ok(), "still the refused file");
        assert!(keys.accepts(KEY_B));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(keys.reload(), Err(ApiKeysError::Read { .. })));
        assert!(keys.accepts(KEY_B) && !keys.file_ok());

        std::fs::write(&path, format!("{KEY_A}\n")).expect("restored");
        assert!(keys.reload().expect("valid file"));
        assert!(keys.accepts(KEY_A) && !keys.accepts(KEY_B) && keys.file_ok());
    }
}
