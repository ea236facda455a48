//! Redis access with automatic reconnection and a readiness probe. Commands fail fast while Redis is down;
//! callers retry with [`crate::retry::Backoff`] and never treat an outage as "key absent".

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;

use crate::config::RedisArgs;
use crate::health::Health;

/// A reconnecting Redis connection plus the key prefix of this deployment.
#[derive(Clone)]
pub struct RedisStore {
    /// Multiplexed connection that re-dials on failure; cheap to clone.
    connection: ConnectionManager,
    /// Prefix for every key we write (see `--redis-key-prefix`).
    key_prefix: String,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Creates the store without connecting: Redis may be down at start-up, the probe reports it.
    /// With `--redis-tls-ca` / `--redis-tls-cert` + `--redis-tls-key` the PEM files are read now (a missing
    /// or unreadable file is an error here, not at the first command) and the URL must be `rediss://`.
    pub fn connect_lazy(args: &RedisArgs) -> redis::RedisResult<Self> {
        let client = client(args)?;
        let timeout = Duration::from_millis(args.timeout_ms);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            key_prefix: args.key_prefix.clone(),
        })
    }

    /// A connection handle for commands and pipelines.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// `<prefix>:<parts joined by ':'>`.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = self.key_prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    /// Sends PING; Ok when Redis answers.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        let mut connection = self.connection();
        let _: String = redis::cmd("PING").query_async(&mut connection).await?;
        Ok(())
    }
}

/// The Redis client of `args`: plain, or TLS with the configured CA and client certificate.
fn client(args: &RedisArgs) -> redis::RedisResult<redis::Client> {
    if !args.has_tls_files() {
        return redis::Client::open(args.url.expose());
    }
    if !args.url.expose().starts_with("rediss://") {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "--redis-tls-ca/--redis-tls-cert/--redis-tls-key need a rediss:// --redis-url",
            args.url.redacted(),
        )));
    }
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|error| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot read a Redis TLS file",
                format!("{what} {}: {error}", path.display()),
            ))
        })
    };
    let root_cert = args
        .tls_ca
        .as_deref()
        .map(|path| read(path, "--redis-tls-ca"))
        .transpose()?;
    let client_tls = match (args.tls_cert.as_deref(), args.tls_key.as_deref()) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "--redis-tls-cert")?,
            client_key: read(key, "--redis-tls-key")?,
        }),
        (None, None) => None,
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "--redis-tls-cert and --redis-tls-key go together",
            )));
        }
    };
    redis::Client::build_with_tls(
        args.url.expose(),
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
}

/// Periodically PINGs Redis and reports it as the `redis` check.
pub fn spawn_redis_probe(
    store: RedisStore,
    health: Health,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match store.ping().await {
                Ok(()) => health.set_check("redis", true, "PONG"),
                Err(error) => health.set_check("redis", false, error.to_string()),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
    })
}
