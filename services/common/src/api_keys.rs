//! API keys for the services' request APIs (`--api-keys-file`): `Authorization: Bearer <key>` checked
//! against the keys of a file that is re-read while the service runs, so keys rotate without a restart;
//! optionally a rate per key (`--api-key-rate`, a token bucket each, counted in reviews or texts, so a
//! batch costs what it carries), so one client's flood is answered 429 instead of taking the request
//! slots every other client shares. The buckets live in this process or, with
//! `--api-key-rate-scope shared`, in Redis, shared by every replica of the service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::MethodRouter;
use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::http::json_error;
use crate::shared_buckets::{SharedBuckets, SharedVerdict};
use crate::store::RedisStore;

/// Shortest key accepted: a guessable key is worse than none, since it looks like protection.
pub const MIN_KEY_CHARS: usize = 16;

/// How often the keys file is read again; a rotated key takes effect within this time.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// Who may call the service's request API.
#[derive(Args, Clone, Debug)]
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

    /// Sustained items per second each API key may send: reviews for ingest, texts for infer, so a
    /// batch costs what it carries (a token bucket per key; needs --api-keys-file). A key with no
    /// token left is answered 429 `rate_limited` with `Retry-After` before its request takes a slot;
    /// a batch larger than what the key has left is answered 429 once it is read, and one larger than
    /// the burst 413 `over_key_burst`; a refused request costs its first item. Whether the replicas
    /// of the service share each key's bucket: --api-key-rate-scope. Unset: no per-key limit (the
    /// shared slots of --http-max-concurrent still bound the load).
    #[arg(
        long = "api-key-rate",
        env = "SENTIFLOW_API_KEY_RATE",
        value_name = "PER_SECOND"
    )]
    pub api_key_rate: Option<f64>,

    /// Items (reviews or texts) a key may send at once after a quiet spell: the bucket's size, and
    /// the largest batch the key may send. Default: the rate rounded up, or the most items one
    /// request may hold (--http-max-reviews, --http-max-texts) if that is more, so any valid batch
    /// can pass.
    #[arg(
        long = "api-key-burst",
        env = "SENTIFLOW_API_KEY_BURST",
        value_name = "ITEMS"
    )]
    pub api_key_burst: Option<u32>,

    /// Where each key's bucket lives. `shared`: in Redis (--redis-url), one bucket per key for all
    /// replicas of this service, so the rate holds behind a load balancer; each request asks Redis
    /// (as it comes in, and for the rest of its items when it holds more than one), and when Redis
    /// does not answer within --api-key-rate-timeout-ms this instance's own bucket decides until
    /// Redis answers again (one request a second asks; counted in `_api_key_rate_fallbacks_total`).
    /// `instance`: each replica keeps its own buckets (no Redis call; behind a load balancer a key
    /// may send the rate times the replicas).
    #[arg(
        long = "api-key-rate-scope",
        env = "SENTIFLOW_API_KEY_RATE_SCOPE",
        value_name = "SCOPE",
        value_enum,
        default_value_t = RateScope::Shared
    )]
    pub api_key_rate_scope: RateScope,

    /// With shared buckets: longest a request waits for Redis before this instance's own bucket
    /// for the key decides instead.
    #[arg(
        long = "api-key-rate-timeout-ms",
        env = "SENTIFLOW_API_KEY_RATE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = DEFAULT_RATE_TIMEOUT_MS,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub api_key_rate_timeout_ms: u64,
}

impl Default for ApiAuthArgs {
    /// As with no flag given: an open API.
    fn default() -> Self {
        Self {
            api_keys_file: None,
            api_key_rate: None,
            api_key_burst: None,
            api_key_rate_scope: RateScope::Shared,
            api_key_rate_timeout_ms: DEFAULT_RATE_TIMEOUT_MS,
        }
    }
}

/// Default of `--api-key-rate-timeout-ms`.
pub const DEFAULT_RATE_TIMEOUT_MS: u64 = 100;

/// Where the per-key buckets of `--api-key-rate` live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum RateScope {
    /// In Redis, shared by every replica of the service (this instance's own when Redis is down).
    #[default]
    Shared,
    /// In this process only.
    Instance,
}

/// The slowest per-key rate accepted: one item a day (a slower one is a disabled key: remove it).
pub const MIN_RATE_PER_SECOND: f64 = 1.0 / 86_400.0;

/// The per-key rate of `--api-key-rate` / `--api-key-burst`, in items (reviews or texts).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens (items: reviews or texts) added per second.
    pub per_second: f64,
    /// Bucket size: items allowed at once, and the largest batch a key may send.
    pub burst: f64,
}

impl ApiAuthArgs {
    /// The per-key rate asked for, if any, for an API whose requests hold at most
    /// `max_items_per_request` items.
    ///
    /// # Errors
    /// A rate that is not a positive number, a burst of 0, or either without `--api-keys-file`.
    pub fn rate_limit(
        &self,
        max_items_per_request: usize,
    ) -> Result<Option<RateLimit>, ApiKeysError> {
        let Some(per_second) = self.api_key_rate else {
            return match self.api_key_burst {
                Some(_) => Err(ApiKeysError::Rate(
                    "--api-key-burst needs --api-key-rate".to_owned(),
                )),
                None => Ok(None),
            };
        };
        if !(per_second.is_finite() && per_second >= MIN_RATE_PER_SECOND) {
            return Err(ApiKeysError::Rate(format!(
                "--api-key-rate must be a number of items per second of at least {MIN_RATE_PER_SECOND:.6} \
                 (one a day), not {per_second}"
            )));
        }
        if self.api_keys_file.is_none() {
            return Err(ApiKeysError::Rate(
                "--api-key-rate limits each API key: it needs --api-keys-file".to_owned(),
            ));
        }
        let burst = match self.api_key_burst {
            Some(0) => {
                return Err(ApiKeysError::Rate(
                    "--api-key-burst must be at least 1".to_owned(),
                ));
            }
            Some(burst) => f64::from(burst),
            None => per_second.ceil().max(max_items_per_request as f64).max(1.0),
        };
        Ok(Some(RateLimit { per_second, burst }))
    }
}

/// A token bucket: full at first, refilled at the rate, one token per item (review or text).
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

/// Why a key's bucket refused a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Refusal {
    /// Not enough tokens now: how long until there are.
    Wait(Duration),
    /// More items than the bucket holds: no wait makes the request pass.
    OverBurst,
}

impl TokenBucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self {
            tokens: limit.burst,
            updated: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        // Concurrent requests read the clock before taking the lock: one that comes in with an
        // earlier time is refilled by nothing, and the bucket's time never goes back.
        if now > self.updated {
            let elapsed = (now - self.updated).as_secs_f64();
            self.tokens = (self.tokens + elapsed * limit.per_second).min(limit.burst);
            self.updated = now;
        }
    }

    /// Takes `need` tokens at `now` when the bucket holds that many; otherwise the wait until it
    /// holds `want` (see [`Take::need_and_want`]; the Redis script of `shared_buckets` does the same).
    fn take(
        &mut self,
        limit: RateLimit,
        now: Instant,
        need: f64,
        want: f64,
    ) -> Result<(), Refusal> {
        self.refill(limit, now);
        if self.tokens >= need {
            self.tokens -= need;
            Ok(())
        } else {
            Err(Refusal::Wait(wait_for(want - self.tokens, limit)))
        }
    }
}

/// How long `missing` tokens take to come back at the rate.
fn wait_for(missing: f64, limit: RateLimit) -> Duration {
    Duration::try_from_secs_f64(missing / limit.per_second).unwrap_or(Duration::MAX)
}

/// A key's short public id in metrics and logs: the first 8 hex digits of its SHA-256 (`printf %s
/// "$KEY" | sha256sum | cut -c1-8`). It does not reveal a random key (`openssl rand -hex 32`); a weak,
/// guessable key could be tested against it offline, as against any leaked digest.
pub fn key_id(digest: &[u8; 32]) -> String {
    hex::encode(&digest[..4])
}

impl ApiAuthArgs {
    /// Loads the keys for `service`, whose requests hold at most `max_items_per_request` items (or
    /// says at start-up, loudly when the address is reachable from other hosts, that its API is open).
    ///
    /// # Errors
    /// The file cannot be read, holds an invalid key or no key at all.
    pub fn load(
        &self,
        service: &'static str,
        http_addr: SocketAddr,
        max_items_per_request: usize,
        redis: &RedisStore,
    ) -> Result<Option<Arc<ApiKeys>>, ApiKeysError> {
        let rate_limit = self.rate_limit(max_items_per_request)?;
        if let Some(limit) = rate_limit
            && limit.burst < max_items_per_request as f64
        {
            tracing::warn!(
                burst = limit.burst,
                max_items_per_request,
                "--api-key-burst is below the most items one request may hold: larger batches are \
                 answered 413 over_key_burst"
            );
        }
        match &self.api_keys_file {
            Some(path) => {
                let shared = (rate_limit.is_some() && self.api_key_rate_scope == RateScope::Shared)
                    .then(|| {
                        (
                            redis.clone(),
                            Duration::from_millis(self.api_key_rate_timeout_ms),
                        )
                    });
                let keys = ApiKeys::load_limited(service, path, rate_limit, shared)?;
                tracing::info!(
                    path = %path.display(),
                    keys = keys.key_count(),
                    rate_per_key = ?rate_limit,
                    rate_scope = ?self.api_key_rate_scope,
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
    /// `--api-key-rate` / `--api-key-burst` cannot be used as given.
    #[error("{0}")]
    Rate(String),
    /// No key at all: every request would be refused, which is never what was meant.
    #[error(
        "API keys file {path} holds no key (one key per line); to leave the API open, unset --api-keys-file"
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// What a request let through under a per-key rate still owes: its first item was paid for when it
/// came in; [`KeyAllowance::charge`] pays for the rest once the handler knows how many there are.
#[derive(Clone, Debug)]
pub struct KeyAllowance {
    keys: Arc<ApiKeys>,
    digest: [u8; 32],
}

impl KeyAllowance {
    /// The allowance of `request`, when its key is under a per-key rate.
    pub fn of(request: &Request) -> Option<Self> {
        request.extensions().get::<Self>().cloned()
    }

    /// Charges a request of `items` reviews or texts to its key (a request costs at least one).
    ///
    /// # Errors
    /// The answer to send instead: 429 `rate_limited` with `Retry-After` when the key has too few
    /// tokens left, 413 `over_key_burst` when `items` is more than its burst. A refused request
    /// keeps its first token spent.
    pub async fn charge(&self, items: usize) -> Result<(), Box<Response>> {
        let items = items.max(1);
        self.keys
            .take(self.digest, Take::Rest(items as f64))
            .await
            .map_err(|refusal| Box::new(self.keys.refused(&self.digest, refusal, Some(items))))
    }
}

/// The keys in force: only their SHA-256 digests are kept (the file's text is dropped once parsed), so
/// a presented key is compared in constant time against fixed-length values.
#[derive(Debug)]
pub struct ApiKeys {
    service: &'static str,
    path: PathBuf,
    loaded: RwLock<LoadedKeys>,
    rate_limit: Option<RateLimit>,
    /// One bucket per key in force that has been used (retired keys' buckets go at a reload); with
    /// shared buckets, what decides while Redis cannot.
    buckets: Mutex<HashMap<[u8; 32], TokenBucket>>,
    /// The buckets in Redis, with `--api-key-rate-scope shared`.
    shared: Option<SharedBuckets>,
}

/// What a request takes from its key's bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Take {
    /// Its first item's token, as it comes in, before its body is read.
    First,
    /// The rest of its items, once counted (the first was taken). A refused request keeps that
    /// first token spent: it was read and parsed, and a free refusal would let a key send oversized
    /// batches without end.
    Rest(f64),
}

impl Take {
    /// What no bucket needs to decide: a batch larger than the burst (no wait helps), the rest of a
    /// one-item request (nothing left to take).
    fn settled(self, limit: RateLimit) -> Option<Result<(), Refusal>> {
        match self {
            Self::Rest(items) if items > limit.burst => Some(Err(Refusal::OverBurst)),
            Self::Rest(items) if items <= 1.0 => Some(Ok(())),
            _ => None,
        }
    }

    /// The tokens to take now, and those a refused request waits for: the whole request, sent
    /// again.
    fn need_and_want(self) -> (f64, f64) {
        match self {
            Self::First => (1.0, 1.0),
            Self::Rest(items) => (items - 1.0, items),
        }
    }
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
        Self::load_limited(service, path, None, None)
    }

    /// [`ApiKeys::load`] with a rate per key, its buckets in this process or, given `shared`, in
    /// that Redis (asked for at most that long before the local bucket decides).
    ///
    /// # Errors
    /// The file cannot be read, holds an invalid key or no key.
    pub fn load_limited(
        service: &'static str,
        path: &Path,
        rate_limit: Option<RateLimit>,
        shared: Option<(RedisStore, Duration)>,
    ) -> Result<Arc<Self>, ApiKeysError> {
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
            rate_limit,
            buckets: Mutex::new(HashMap::new()),
            shared: shared
                .filter(|_| rate_limit.is_some())
                .map(|(store, timeout)| SharedBuckets::new(store, service, timeout)),
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
        let in_force = key_digests.clone();
        *self
            .loaded
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = LoadedKeys {
            file_digest,
            key_digests,
            file_refused: false,
        };
        // After the new keys are in force, so a request checked against the old ones just before
        // cannot leave a retired key's bucket behind.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, _| in_force.contains(key));
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
        self.accepted_digest(presented).is_some()
    }

    /// The digest of `presented` when it is one of the keys in force.
    fn accepted_digest(&self, presented: &str) -> Option<[u8; 32]> {
        let digest = sha256(presented.as_bytes());
        let loaded = self
            .loaded
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every key is compared, so the time taken does not say which one (if any) matched.
        let found = loaded
            .key_digests
            .iter()
            .fold(false, |found, key| digests_equal(key, &digest) | found);
        found.then_some(digest)
    }

    /// Takes what a request owes from the bucket of the key with `digest`: the shared one in Redis
    /// when there is one and it answers, this instance's otherwise; without a per-key rate every
    /// request passes.
    async fn take(&self, digest: [u8; 32], take: Take) -> Result<(), Refusal> {
        if let (Some(shared), Some(limit)) = (&self.shared, self.rate_limit)
            && take.settled(limit).is_none()
        {
            let (need, want) = take.need_and_want();
            match shared
                .take(&digest, limit.per_second, limit.burst, need, want)
                .await
            {
                Some(SharedVerdict::Taken) => return Ok(()),
                Some(SharedVerdict::Wait(wait)) => return Err(Refusal::Wait(wait)),
                None => {}
            }
        }
        self.take_here(digest, Instant::now(), take)
    }

    /// [`ApiKeys::take`] from this instance's bucket of the key with `digest`, at `now`.
    fn take_here(&self, digest: [u8; 32], now: Instant, take: Take) -> Result<(), Refusal> {
        let Some(limit) = self.rate_limit else {
            return Ok(());
        };
        if let Some(settled) = take.settled(limit) {
            return settled;
        }
        let (need, want) = take.need_and_want();
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(digest)
            .or_insert_with(|| TokenBucket::full(limit, now))
            .take(limit, now, need, want)
    }

    /// Checks a request's `Authorization: Bearer <key>` header.
    ///
    /// # Errors
    /// The header is missing, not a bearer token, or its key is not in force.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        self.check_key(headers).map(|_| ())
    }

    /// [`ApiKeys::check`], answering the digest of the key presented.
    fn check_key(&self, headers: &HeaderMap) -> Result<[u8; 32], AuthFailure> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthFailure::MissingApiKey)?;
        let value = value.to_str().map_err(|_| AuthFailure::InvalidApiKey)?;
        let (scheme, token) = value
            .trim()
            .split_once(' ')
            .ok_or(AuthFailure::InvalidApiKey)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthFailure::InvalidApiKey);
        }
        self.accepted_digest(token.trim())
            .ok_or(AuthFailure::InvalidApiKey)
    }

    /// Middleware: a request without a key in force is answered 401, and one whose key has no token
    /// left 429, before anything else happens to it (it takes no request slot and its body is not
    /// read). A request let through under a per-key rate carries a [`KeyAllowance`] for the rest of
    /// its items, which the handler charges once it has read them.
    pub async fn require_key(self: Arc<Self>, mut request: Request, next: Next) -> Response {
        let failure = match self.check_key(request.headers()) {
            Ok(digest) => {
                return match self.take(digest, Take::First).await {
                    Ok(()) => {
                        if self.rate_limit.is_some() {
                            request.extensions_mut().insert(KeyAllowance {
                                keys: Arc::clone(&self),
                                digest,
                            });
                        }
                        next.run(request).await
                    }
                    Err(refusal) => {
                        // The handler never runs, so its request metric is counted here.
                        metrics::counter!(format!("sentiflow_{}_http_requests_total", self.service), "status" => "429")
                            .increment(1);
                        self.refused(&digest, refusal, None)
                    }
                };
            }
            Err(failure) => failure,
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

    /// The answer to a request refused by its key's bucket, as it came in (`items` unknown yet) or
    /// once read: 429 with `Retry-After` in whole seconds (at least 1), or 413 when the batch is
    /// larger than the burst. The caller counts the answer in `_http_requests_total`.
    fn refused(&self, digest: &[u8; 32], refusal: Refusal, items: Option<usize>) -> Response {
        let key = key_id(digest);
        let (status, error, message, retry_after) = match refusal {
            Refusal::Wait(wait) => {
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                let message = match items {
                    None => format!(
                        "API key {key} has no token left (--api-key-rate); retry in {retry_after} s"
                    ),
                    Some(items) => format!(
                        "API key {key} has too few tokens left for {items} items (--api-key-rate); \
                         this request may be sent again in {retry_after} s"
                    ),
                };
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    message,
                    Some(retry_after),
                )
            }
            Refusal::OverBurst => {
                let burst = self.rate_limit.map_or(0.0, |limit| limit.burst);
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "over_key_burst",
                    format!(
                        "{} items in one request is more than API key {key} may send at once \
                         ({burst} by --api-key-burst): send at most {burst} per request",
                        items.unwrap_or(0)
                    ),
                    None,
                )
            }
        };
        metrics::counter!(format!("sentiflow_{}_api_key_rate_limited_total", self.service), "key" => key.clone())
            .increment(1);
        tracing::debug!(key, items, ?refusal, "request over its API key's rate");
        let mut response = json_error(self.service, status, error, message);
        if let Some(retry_after) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
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

/// Marks the POST operation at `path` of an OpenAPI document as needing a bearer key of `keys`, with
/// its 401 answer, its 429 when `keys` has a per-key rate, and its key-burst 413 when that burst is
/// below `max_items_per_request` (a service started without keys leaves its document as it is).
pub fn document_in_openapi(
    document: &mut serde_json::Value,
    path: &str,
    keys: &ApiKeys,
    max_items_per_request: usize,
) {
    let operation = &mut document["paths"][path]["post"];
    operation["security"] = serde_json::json!([{"apiKey": []}]);
    if keys.rate_limit.is_some() {
        operation["responses"]["429"] = serde_json::json!({
            "description": "rate_limited: the API key is over --api-key-rate (counted in items: a batch costs what it carries); nothing was accepted",
            "headers": {"Retry-After": {"description": "Whole seconds until the key may send this request", "schema": {"type": "integer", "minimum": 1}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        });
    }
    if let Some(limit) = keys.rate_limit
        && limit.burst < max_items_per_request as f64
    {
        // The document already says 413 for a body over the size limit: the key's burst is added.
        let over_burst = "or over_key_burst: more items than the API key may send at once \
                          (--api-key-burst); split the request";
        let too_large = &mut operation["responses"]["413"];
        too_large["description"] = match too_large["description"].as_str() {
            Some(body_too_large) => format!("{body_too_large}, {over_burst}"),
            None => over_burst.to_owned(),
        }
        .into();
        too_large["content"] = serde_json::json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    }
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

    #[test]
    fn the_rate_flags_are_checked_and_the_burst_defaults_to_the_rate_or_the_largest_request() {
        let (_dir, path) = keys_file(KEY_A);
        let args = |rate: Option<f64>, burst: Option<u32>, file: bool| ApiAuthArgs {
            api_keys_file: file.then(|| path.clone()),
            api_key_rate: rate,
            api_key_burst: burst,
            api_key_rate_scope: RateScope::Shared,
            api_key_rate_timeout_ms: 100,
        };
        assert_eq!(args(None, None, true).rate_limit(1).unwrap(), None);
        assert_eq!(
            args(Some(2.5), None, true).rate_limit(1).unwrap(),
            Some(RateLimit {
                per_second: 2.5,
                burst: 3.0
            })
        );
        assert_eq!(
            args(Some(0.2), None, true).rate_limit(1).unwrap(),
            Some(RateLimit {
                per_second: 0.2,
                burst: 1.0
            })
        );
        assert_eq!(
            args(Some(0.2), None, true)
                .rate_limit(500)
                .unwrap()
                .map(|limit| limit.burst),
            Some(500.0),
            "any request the API takes can pass"
        );
        assert_eq!(
            args(Some(2_000.5), None, true)
                .rate_limit(500)
                .unwrap()
                .map(|limit| limit.burst),
            Some(2_001.0)
        );
        assert_eq!(
            args(Some(10.0), Some(40), true)
                .rate_limit(500)
                .unwrap()
                .map(|limit| limit.burst),
            Some(40.0),
            "an explicit burst is kept, even below the largest request"
        );
        for (rate, burst, file, says) in [
            (Some(5.0), None, false, "needs --api-keys-file"),
            (None, Some(5), true, "--api-key-burst needs --api-key-rate"),
            (Some(0.0), None, true, "at least"),
            (Some(-1.0), None, true, "at least"),
            (Some(f64::NAN), None, true, "at least"),
            (Some(1e-9), None, true, "one a day"),
            (Some(1.0), Some(0), true, "at least 1"),
        ] {
            let error = args(rate, burst, file)
                .rate_limit(1)
                .unwrap_err()
                .to_string();
            assert!(error.contains(says), "{rate:?} {burst:?} {file}: {error}");
        }
    }

    #[test]
    fn no_flags_mean_the_default_arguments() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            auth: ApiAuthArgs,
        }
        let parsed = <Command as clap::Parser>::try_parse_from(["service"])
            .unwrap()
            .auth;
        let default = ApiAuthArgs::default();
        assert_eq!(
            format!("{parsed:?}"),
            format!("{default:?}"),
            "clap's defaults and Default agree"
        );
    }

    #[test]
    fn a_scope_or_timeout_that_cannot_work_is_refused_with_its_flag() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            auth: ApiAuthArgs,
        }
        let parse = |args: &[&str]| {
            <Command as clap::Parser>::try_parse_from([&["service"], args].concat()).map(|c| c.auth)
        };
        let scope = parse(&["--api-key-rate-scope", "instance"]).unwrap();
        assert_eq!(scope.api_key_rate_scope, RateScope::Instance);
        for (args, says) in [
            (
                &["--api-key-rate-scope", "cluster"][..],
                "--api-key-rate-scope",
            ),
            (
                &["--api-key-rate-timeout-ms", "0"][..],
                "--api-key-rate-timeout-ms",
            ),
            (
                &["--api-key-rate-timeout-ms", "60001"][..],
                "--api-key-rate-timeout-ms",
            ),
        ] {
            let Err(error) = parse(args) else {
                panic!("{args:?} must be refused");
            };
            assert!(error.to_string().contains(says), "{args:?}: {error}");
        }
    }

    /// Takes the first token of a request of the key with `digest` at `now`.
    fn take_first(keys: &ApiKeys, digest: [u8; 32], now: Instant) -> Result<(), Refusal> {
        keys.take_here(digest, now, Take::First)
    }

    /// Takes the rest of a request of `items` of the key with `digest` at `now`.
    fn take_rest(
        keys: &ApiKeys,
        digest: [u8; 32],
        now: Instant,
        items: usize,
    ) -> Result<(), Refusal> {
        keys.take_here(digest, now, Take::Rest(items as f64))
    }

    fn wait_millis(millis: u64) -> Result<(), Refusal> {
        Err(Refusal::Wait(Duration::from_millis(millis)))
    }

    #[test]
    fn each_key_has_its_own_bucket_refilled_at_the_rate() {
        let (_dir, path) = keys_file(&format!("{KEY_A}\n{KEY_B}\n"));
        let limit = RateLimit {
            per_second: 2.0,
            burst: 2.0,
        };
        let keys = ApiKeys::load_limited("test", &path, Some(limit), None).unwrap();
        let a = keys.check_key(&bearer(&format!("Bearer {KEY_A}"))).unwrap();
        let b = keys.check_key(&bearer(&format!("Bearer {KEY_B}"))).unwrap();
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        assert_eq!(take_first(&keys, a, at(0)), Ok(()));
        assert_eq!(take_first(&keys, a, at(0)), Ok(()), "the burst");
        assert_eq!(
            take_first(&keys, a, at(0)),
            wait_millis(500),
            "one token at 2/s"
        );
        assert_eq!(
            take_first(&keys, b, at(0)),
            Ok(()),
            "another key is not held back"
        );
        assert_eq!(take_first(&keys, a, at(250)), wait_millis(250));
        assert_eq!(take_first(&keys, a, at(500)), Ok(()), "refilled");
        assert!(take_first(&keys, a, at(500)).is_err());
        // A request that read the clock earlier (it came in concurrently) gets no refill, and the
        // bucket's time does not go back.
        assert!(take_first(&keys, a, at(400)).is_err());
        assert_eq!(take_first(&keys, a, at(500)), wait_millis(500));
        // A long pause refills up to the burst, not beyond.
        assert_eq!(take_first(&keys, a, at(60_000)), Ok(()));
        assert_eq!(take_first(&keys, a, at(60_000)), Ok(()));
        assert!(take_first(&keys, a, at(60_000)).is_err());

        // Without a rate, every request passes, whatever it carries.
        let open = ApiKeys::load("test", &path).unwrap();
        for _ in 0..100 {
            assert_eq!(take_first(&open, a, at(0)), Ok(()));
            assert_eq!(take_rest(&open, a, at(0), 1_000_000), Ok(()));
        }
        assert_eq!(key_id(&a).len(), 8);
        assert!(key_id(&a).bytes().all(|byte| byte.is_ascii_hexdigit()));
    }

    #[test]
    fn a_batch_costs_one_token_per_item_and_a_refused_one_costs_its_first() {
        let (_dir, path) = keys_file(KEY_A);
        let limit = RateLimit {
            per_second: 10.0,
            burst: 5.0,
        };
        let keys = ApiKeys::load_limited("test", &path, Some(limit), None).unwrap();
        let a = keys.check_key(&bearer(&format!("Bearer {KEY_A}"))).unwrap();
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let tokens = || keys.buckets.lock().unwrap()[&a].tokens;

        // A batch of 3: one token as it comes in, two once it is read.
        assert_eq!(take_first(&keys, a, at(0)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(0), 3), Ok(()));
        assert!((tokens() - 2.0).abs() < 1e-9, "{}", tokens());
        // A batch of 4 with 2 left: refused, its first token spent; the wait is for all 4 sent again.
        assert_eq!(take_first(&keys, a, at(0)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(0), 4), wait_millis(300));
        assert!((tokens() - 1.0).abs() < 1e-9, "{}", tokens());
        assert_eq!(take_first(&keys, a, at(300)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(300), 4), Ok(()), "after the wait");
        // More than the burst never passes, whatever the wait: 413, its first token spent.
        assert_eq!(take_first(&keys, a, at(10_000)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(10_000), 6), Err(Refusal::OverBurst));
        assert!((tokens() - 4.0).abs() < 1e-9, "{}", tokens());
        // So a key sending oversized batches without end is soon refused as they come in.
        let mut refused_at_the_door = false;
        for _ in 0..10 {
            match take_first(&keys, a, at(10_000)) {
                Ok(()) => assert_eq!(
                    take_rest(&keys, a, at(10_000), 500),
                    Err(Refusal::OverBurst)
                ),
                Err(Refusal::Wait(_)) => refused_at_the_door = true,
                Err(Refusal::OverBurst) => unreachable!("the first token is never over the burst"),
            }
        }
        assert!(refused_at_the_door);
        // The whole burst in one batch passes.
        assert_eq!(take_first(&keys, a, at(20_000)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(20_000), 5), Ok(()));
        assert!(tokens().abs() < 1e-9);
        // The first token of a single item is the whole request: nothing more to take.
        assert_eq!(take_first(&keys, a, at(20_100)), Ok(()));
        assert_eq!(take_rest(&keys, a, at(20_100), 1), Ok(()));
        assert_eq!(take_first(&keys, a, at(20_100)), wait_millis(100));

        // The answers: 429 with Retry-After in whole seconds, 413 without.
        let waiting = keys.refused(&a, Refusal::Wait(Duration::from_millis(1_200)), Some(4));
        assert_eq!(waiting.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(waiting.headers()[header::RETRY_AFTER], "2");
        let quick = keys.refused(&a, Refusal::Wait(Duration::from_millis(10)), None);
        assert_eq!(quick.headers()[header::RETRY_AFTER], "1");
        let too_many = keys.refused(&a, Refusal::OverBurst, Some(6));
        assert_eq!(too_many.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!too_many.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn a_reload_drops_the_buckets_of_retired_keys() {
        let (_dir, path) = keys_file(&format!("{KEY_A}\n{KEY_B}\n"));
        let limit = RateLimit {
            per_second: 1.0,
            burst: 1.0,
        };
        let keys = ApiKeys::load_limited("test", &path, Some(limit), None).unwrap();
        let a = keys.check_key(&bearer(&format!("Bearer {KEY_A}"))).unwrap();
        let b = keys.check_key(&bearer(&format!("Bearer {KEY_B}"))).unwrap();
        let now = Instant::now();
        take_first(&keys, a, now).unwrap();
        take_first(&keys, b, now).unwrap();
        std::fs::write(&path, format!("{KEY_A}\n")).unwrap();
        assert!(keys.reload().unwrap());
        let buckets = keys.buckets.lock().unwrap();
        assert!(
            buckets.contains_key(&a),
            "a key in force keeps its bucket (and its debt)"
        );
        assert!(!buckets.contains_key(&b));
    }
}
