//! Command-line/environment configuration shared by every service: Kafka (with security pass-through),
//! Redis, telemetry and topic naming. Every flag is also an environment variable; secrets never print.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Args;
use rdkafka::ClientConfig;

/// A value that must never appear in logs or `Debug` output (passwords, keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"***\"")
        }
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// A `key=value` librdkafka property passed through verbatim (`--kafka-option socket.keepalive.enable=true`).
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaOption {
    /// librdkafka property name.
    pub key: String,
    /// Property value; redacted in `Debug` when the key looks secret.
    pub value: String,
}

/// Whether a librdkafka property holds a credential and must be redacted.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "token",
        "key.pem",
        "private",
    ]
    .iter()
    .any(|needle| key.contains(needle))
}

impl fmt::Debug for KafkaOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_secret_key(&self.key) {
            write!(f, "{}=***", self.key)
        } else {
            write!(f, "{}={}", self.key, self.value)
        }
    }
}

impl FromStr for KafkaOption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => Ok(Self {
                key: key.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("expected key=value, got {s:?}")),
        }
    }
}

/// Kafka connection settings. Security settings map 1:1 onto librdkafka properties.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Comma-separated bootstrap servers (host:port).
    #[arg(
        long = "kafka-brokers",
        env = "SENTIFLOW_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Prefix prepended to every catalogue topic name ("" = the plain names, "stage" → "stage.reviews.raw").
    #[arg(
        long = "topic-prefix",
        env = "SENTIFLOW_TOPIC_PREFIX",
        default_value = ""
    )]
    pub topic_prefix: String,

    /// librdkafka `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(
        long = "kafka-security-protocol",
        env = "SENTIFLOW_KAFKA_SECURITY_PROTOCOL"
    )]
    pub security_protocol: Option<String>,

    /// librdkafka `sasl.mechanism` (e.g. SCRAM-SHA-512, PLAIN).
    #[arg(long = "kafka-sasl-mechanism", env = "SENTIFLOW_KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,

    /// librdkafka `sasl.username`.
    #[arg(long = "kafka-sasl-username", env = "SENTIFLOW_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// librdkafka `sasl.password` (redacted in logs).
    #[arg(
        long = "kafka-sasl-password",
        env = "SENTIFLOW_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// librdkafka `ssl.ca.location`: CA bundle used to verify the brokers.
    #[arg(
        long = "kafka-ssl-ca-location",
        env = "SENTIFLOW_KAFKA_SSL_CA_LOCATION"
    )]
    pub ssl_ca_location: Option<String>,

    /// librdkafka `ssl.certificate.location`: client certificate for mutual TLS.
    #[arg(
        long = "kafka-ssl-certificate-location",
        env = "SENTIFLOW_KAFKA_SSL_CERTIFICATE_LOCATION"
    )]
    pub ssl_certificate_location: Option<String>,

    /// librdkafka `ssl.key.location`: client private key for mutual TLS.
    #[arg(
        long = "kafka-ssl-key-location",
        env = "SENTIFLOW_KAFKA_SSL_KEY_LOCATION"
    )]
    pub ssl_key_location: Option<String>,

    /// librdkafka `ssl.key.password` (redacted in logs).
    #[arg(
        long = "kafka-ssl-key-password",
        env = "SENTIFLOW_KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<Secret>,

    /// Extra librdkafka properties, `key=value`, repeatable (env: comma-separated).
    #[arg(
        long = "kafka-option",
        env = "SENTIFLOW_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub options: Vec<KafkaOption>,
}

impl KafkaArgs {
    /// Settings for a local plaintext broker, used by tests and `sentiflow up`.
    pub fn local(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: topic_prefix.into(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            options: Vec::new(),
        }
    }

    /// The physical topic name of a catalogue topic under this configuration's prefix.
    pub fn topic(&self, logical: &str) -> String {
        crate::catalogue::physical_name(&self.topic_prefix, logical)
    }

    /// librdkafka properties for connecting and authenticating; callers add role-specific settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in self.properties() {
            config.set(key, value);
        }
        config
    }

    /// The connection properties as an ordered map (secrets included: never log this map, log `Debug` instead).
    pub fn properties(&self) -> BTreeMap<String, String> {
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".to_owned(), self.brokers.clone());
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(value) = value {
                props.insert(key.to_owned(), value.to_owned());
            }
        };
        put("security.protocol", self.security_protocol.as_deref());
        put("sasl.mechanism", self.sasl_mechanism.as_deref());
        put("sasl.username", self.sasl_username.as_deref());
        put(
            "sasl.password",
            self.sasl_password.as_ref().map(Secret::expose),
        );
        put("ssl.ca.location", self.ssl_ca_location.as_deref());
        put(
            "ssl.certificate.location",
            self.ssl_certificate_location.as_deref(),
        );
        put("ssl.key.location", self.ssl_key_location.as_deref());
        put(
            "ssl.key.password",
            self.ssl_key_password.as_ref().map(Secret::expose),
        );
        for option in &self.options {
            props.insert(option.key.clone(), option.value.clone());
        }
        props
    }
}

/// A Redis URL whose password is redacted in `Debug` and `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The full URL including credentials, for the client constructor only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, safe to log.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or("", |(user, _)| user);
                format!("{scheme}://{user}:***@{host}")
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for RedisUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+unix://")
            || s.starts_with("unix://")
        {
            Ok(Self(s.to_owned()))
        } else {
            Err("expected redis://[user:password@]host:port[/db] or rediss:// for TLS".to_owned())
        }
    }
}

/// Redis connection settings.
#[derive(Args, Clone, Debug)]
pub struct RedisArgs {
    /// Redis URL: redis://[user:password@]host:port/db, or rediss:// for TLS (password redacted in logs).
    #[arg(
        long = "redis-url",
        env = "SENTIFLOW_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        hide_env_values = true
    )]
    pub url: RedisUrl,

    /// Prefix of every Redis key this deployment writes, so several pipelines can share one Redis.
    #[arg(
        long = "redis-key-prefix",
        env = "SENTIFLOW_REDIS_KEY_PREFIX",
        default_value = "sentiflow"
    )]
    pub key_prefix: String,

    /// Timeout of a single Redis command, milliseconds.
    #[arg(
        long = "redis-timeout-ms",
        env = "SENTIFLOW_REDIS_TIMEOUT_MS",
        default_value_t = 2000
    )]
    pub timeout_ms: u64,

    /// PEM CA certificate(s) that verify the Redis server of a rediss:// URL (default: the system roots).
    #[arg(long = "redis-tls-ca", env = "SENTIFLOW_REDIS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for Redis mutual TLS (with --redis-tls-key).
    #[arg(
        long = "redis-tls-cert",
        env = "SENTIFLOW_REDIS_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert.
    #[arg(
        long = "redis-tls-key",
        env = "SENTIFLOW_REDIS_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl RedisArgs {
    /// Settings for a local Redis, used by tests and `sentiflow up`.
    pub fn local(url: &str, key_prefix: impl Into<String>) -> Self {
        Self {
            url: RedisUrl(url.to_owned()),
            key_prefix: key_prefix.into(),
            timeout_ms: 2000,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// Whether any TLS file is configured (then the URL must be `rediss://`).
    pub fn has_tls_files(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_key.is_some()
    }
}

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// HTTP endpoint, logging and shutdown settings.
#[derive(Args, Clone, Debug)]
pub struct TelemetryArgs {
    /// Address of the HTTP server for /healthz, /readyz, /metrics and the service's API (ingest's
    /// POST /v1/reviews, infer's POST /v1/predict, with /openapi.json); port 0 picks a free port.
    #[arg(
        long = "http-addr",
        env = "SENTIFLOW_HTTP_ADDR",
        default_value = "127.0.0.1:9100"
    )]
    pub http_addr: SocketAddr,

    /// Log format.
    #[arg(long = "log-format", env = "SENTIFLOW_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax (RUST_LOG is honoured when this is unset).
    #[arg(long = "log", env = "SENTIFLOW_LOG", default_value = "info")]
    pub log_filter: String,

    /// Time allowed after a shutdown signal to finish in-flight work and commit offsets, milliseconds.
    #[arg(
        long = "drain-timeout-ms",
        env = "SENTIFLOW_DRAIN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub drain_timeout_ms: u64,
}

impl TelemetryArgs {
    /// Settings for tests and in-process runs: a free port and the default drain deadline.
    pub fn ephemeral() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Text,
            log_filter: "info".to_owned(),
            drain_timeout_ms: 10_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut kafka = KafkaArgs::local("b:9092", "");
        kafka.sasl_password = Some(Secret::new("hunter2"));
        kafka.ssl_key_password = Some(Secret::new("pem-pass"));
        kafka
            .options
            .push("sasl.oauthbearer.client.secret=topsecret".parse().unwrap());
        kafka
            .options
            .push("socket.keepalive.enable=true".parse().unwrap());
        let shown = format!("{kafka:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("pem-pass"), "{shown}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("socket.keepalive.enable=true"), "{shown}");
        let props = kafka.properties();
        assert_eq!(props["sasl.password"], "hunter2");
        assert_eq!(props["sasl.oauthbearer.client.secret"], "topsecret");
    }

    #[test]
    fn redis_url_password_is_redacted() {
        let url: RedisUrl = "rediss://svc:s3cret@redis.internal:6380/2".parse().unwrap();
        assert_eq!(url.redacted(), "rediss://svc:***@redis.internal:6380/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        let plain: RedisUrl = "redis://127.0.0.1:6379/".parse().unwrap();
        assert_eq!(plain.redacted(), "redis://127.0.0.1:6379/");
        assert!("http://x".parse::<RedisUrl>().is_err());
    }

    #[derive(clap::Parser, Debug)]
    struct RedisOnly {
        #[command(flatten)]
        redis: RedisArgs,
    }

    #[test]
    fn redis_tls_client_certificate_needs_its_key() {
        use clap::Parser as _;
        let parsed = RedisOnly::try_parse_from([
            "x",
            "--redis-url",
            "rediss://:pw@redis:6380/0",
            "--redis-tls-ca",
            "/tls/ca.crt",
        ])
        .unwrap();
        assert_eq!(
            parsed.redis.tls_ca.as_deref(),
            Some(std::path::Path::new("/tls/ca.crt"))
        );
        assert!(parsed.redis.has_tls_files());
        assert!(!RedisArgs::local("redis://127.0.0.1:6379/", "p").has_tls_files());
        let error = RedisOnly::try_parse_from(["x", "--redis-tls-cert", "/tls/client.crt"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--redis-tls-key"), "{error}");
    }

    #[test]
    fn kafka_option_needs_key_and_value() {
        assert!("noequals".parse::<KafkaOption>().is_err());
        assert!("=v".parse::<KafkaOption>().is_err());
        let option: KafkaOption = "a.b=c=d".parse().unwrap();
        assert_eq!((option.key.as_str(), option.value.as_str()), ("a.b", "c=d"));
    }
}
