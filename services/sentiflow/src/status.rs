//! `sentiflow status`: every service's readiness at a glance (its `/healthz`: status, failing checks,
//! what it serves), as a table or JSON, with an exit status scripts and probes can act on.
#![allow(clippy::print_stdout)] // a CLI's report belongs on stdout

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest `/healthz` answer read: a real one is a few KiB.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// The services `status` asks, in the pipeline's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    /// reviews.raw → reviews.clean; POST /v1/reviews.
    Ingest,
    /// reviews.clean → predictions; POST /v1/predict.
    Infer,
    /// Curation, snapshots, retraining.
    Trainer,
    /// Drift watching and retrain requests.
    Drift,
}

impl ServiceName {
    const ALL: [Self; 4] = [Self::Ingest, Self::Infer, Self::Trainer, Self::Drift];

    /// The name a service gives itself in its `/healthz` (`service`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Infer => "infer",
            Self::Trainer => "trainer",
            Self::Drift => "drift",
        }
    }
}

/// `sentiflow status`.
#[derive(Args, Debug, Clone)]
#[command(
    after_help = "Exit status: 0 when every service asked is ready, 1 when one is degraded (serving, but an \
                  optional dependency is down) and none is worse, 2 when one is not ready, unreachable or \
                  not the service expected at its address, 3 when it could not ask (a bad flag). The defaults are the addresses `sentiflow up` \
                  serves on; in Kubernetes, port-forward each service's 9100 or run it in the cluster."
)]
pub struct StatusArgs {
    /// ingest's HTTP base URL (where its /healthz is served).
    #[arg(
        long,
        env = "SENTIFLOW_INGEST_URL",
        default_value = "http://127.0.0.1:9101",
        value_name = "URL"
    )]
    pub ingest_url: String,
    /// infer's HTTP base URL.
    #[arg(
        long,
        env = "SENTIFLOW_INFER_URL",
        default_value = "http://127.0.0.1:9102",
        value_name = "URL"
    )]
    pub infer_url: String,
    /// trainer's HTTP base URL.
    #[arg(
        long,
        env = "SENTIFLOW_TRAINER_URL",
        default_value = "http://127.0.0.1:9103",
        value_name = "URL"
    )]
    pub trainer_url: String,
    /// drift's HTTP base URL.
    #[arg(
        long,
        env = "SENTIFLOW_DRIFT_URL",
        default_value = "http://127.0.0.1:9104",
        value_name = "URL"
    )]
    pub drift_url: String,
    /// Only these services (comma-separated; default: all four).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "SERVICES")]
    pub services: Vec<ServiceName>,
    /// How long each service may take to answer (connect and read), in seconds.
    #[arg(long, default_value_t = 3.0, value_name = "SECONDS")]
    pub timeout_secs: f64,
    /// Print one JSON document (each service's answer as it gave it) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What one service said, or why it said nothing useful.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Which service.
    pub service: ServiceName,
    /// The base URL asked.
    pub url: String,
    /// `ready`, `degraded`, `not_ready` (the service's own word), `unreachable` (no HTTP answer) or
    /// `unexpected` (an answer that is not this service's `/healthz`).
    pub status: String,
    /// The reason behind `unreachable` or `unexpected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `/healthz` document as the service served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Value>,
}

impl ServiceStatus {
    /// 0 ready, 1 degraded, 2 anything worse: the exit status this service alone would give.
    pub fn severity(&self) -> u8 {
        match self.status.as_str() {
            "ready" => 0,
            "degraded" => 1,
            _ => 2,
        }
    }

    /// The checks that fail, as `name (required|optional): detail`, or how many pass.
    fn checks_summary(&self) -> String {
        // An unexpected answer's checks are another service's: only the reason is shown.
        if let Some(error) = &self.error {
            return error.clone();
        }
        let Some(checks) = self
            .health
            .as_ref()
            .and_then(|health| health["checks"].as_object())
        else {
            return String::new();
        };
        let failing: Vec<String> = checks
            .iter()
            .filter(|(_, check)| check["ok"].as_bool() != Some(true))
            .map(|(name, check)| {
                let kind = if check["required"].as_bool() == Some(false) {
                    "optional"
                } else {
                    "required"
                };
                let since = check["since"]
                    .as_str()
                    .map(|since| format!(" since {}", to_the_second(since)))
                    .unwrap_or_default();
                format!(
                    "{name} ({kind}) failing{since}: {}",
                    check["detail"].as_str().unwrap_or("")
                )
            })
            .collect();
        if failing.is_empty() {
            format!("all {} ok", checks.len())
        } else {
            failing.join("; ")
        }
    }

    /// The facts an operator asks next: what infer serves and on which device, the trainer's last
    /// retrain, a model that failed to load.
    fn notes(&self) -> String {
        let Some(info) = self
            .health
            .as_ref()
            .filter(|_| self.error.is_none())
            .map(|health| &health["info"])
        else {
            return String::new();
        };
        let mut notes = Vec::new();
        if let Some(model) = info["model"].as_object() {
            let text = |key: &str| model.get(key).and_then(Value::as_str).unwrap_or("?");
            // The device the served model's session runs on; the start-up probe's otherwise.
            let device = model
                .get("device")
                .and_then(Value::as_str)
                .or_else(|| info["device"].as_str())
                .unwrap_or("?");
            notes.push(format!(
                "serving {} {} ({} on {device})",
                text("name"),
                text("version"),
                text("family")
            ));
        }
        if let Some(reason) = info["device_fallback_reason"].as_str() {
            notes.push(format!("device fallback: {reason}"));
        }
        if let Some(error) = info["last_load_error"].as_str() {
            notes.push(format!("last load error: {error}"));
        }
        if let Some(retrain) = info["last_retrain"].as_object() {
            let outcome = retrain
                .get("outcome")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let version = retrain
                .get("version")
                .and_then(Value::as_str)
                .map(|version| format!(" {version}"))
                .unwrap_or_default();
            notes.push(format!("last retrain: {outcome}{version}"));
        }
        notes.join("; ")
    }
}

/// An RFC 3339 time to the second (`2026-12-06T12:17:30Z`); anything else as it is.
fn to_the_second(time: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(time).map_or_else(
        |_| time.to_owned(),
        |time| {
            time.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        },
    )
}

/// An `http://host:port[/prefix]` base URL taken apart.
#[derive(Debug, PartialEq, Eq)]
struct BaseUrl {
    host: String,
    port: u16,
    prefix: String,
}

impl BaseUrl {
    /// The `Host` header: brackets around an IPv6 address, the port unless it is 80.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn parse_base_url(url: &str) -> Result<BaseUrl, String> {
    let rest = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or_else(|| {
            "only http:// URLs are supported (the health endpoints serve plain HTTP)".to_owned()
        })?;
    if rest.contains(['?', '#', '@']) {
        return Err("a base URL has no query, fragment or user".to_owned());
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let parse_port = |port: &str| {
        port.parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("`{port}` is not a port"))
    };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or("an IPv6 address without its closing `]`")?;
        match after.strip_prefix(':') {
            Some(port) => (host, parse_port(port)?),
            None if after.is_empty() => (host, 80),
            None => return Err(format!("`{after}` after the IPv6 address")),
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err("an IPv6 address goes in brackets: http://[::1]:9101".to_owned());
            }
            Some((host, port)) => (host, parse_port(port)?),
            None => (authority, 80),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host".to_owned());
    }
    Ok(BaseUrl {
        host: host.to_owned(),
        port,
        prefix: path.trim_end_matches('/').to_owned(),
    })
}

/// The position just past the blank line that ends an HTTP head, if `bytes` holds it.
fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|position| position + 4)
}

/// How the body of an HTTP answer is delimited.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The status code and body framing of an HTTP answer's head.
fn parse_head(head: &[u8]) -> Result<(u16, Framing), String> {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("the answer is not HTTP")?;
    let mut framing = Framing::UntilClose;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
        } else if name.eq_ignore_ascii_case("content-length") && framing != Framing::Chunked {
            let length = value
                .parse::<usize>()
                .map_err(|_| format!("a Content-Length of `{value}`"))?;
            framing = Framing::Length(length);
        }
    }
    Ok((code, framing))
}

/// The body of a chunked answer, once `bytes` holds all of it (`None`: more is needed).
fn dechunk(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = bytes[at..].windows(2).position(|pair| pair == b"\r\n") else {
            return Ok(None);
        };
        let size_line = String::from_utf8_lossy(&bytes[at..at + line_end]);
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("a chunk size of `{size_text}`"))?;
        at += line_end + 2;
        if size == 0 {
            return Ok(Some(body));
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&bytes[at..at + size]);
        at += size + 2;
    }
}

/// GETs `<url>/healthz`: the HTTP status code and the body, read as far as the answer says it goes
/// (a server that keeps the connection open is not waited on).
async fn get_healthz(url: &BaseUrl) -> Result<(u16, Vec<u8>), String> {
    let mut stream = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let request = format!(
        "GET {}/healthz HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        url.prefix,
        url.host_header()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| format!("send: {error}"))?;
    let mut answer = Vec::new();
    let mut buffer = [0_u8; 8192];
    let mut head: Option<(usize, u16, Framing)> = None;
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|error| format!("read: {error}"))?;
        answer.extend_from_slice(&buffer[..read]);
        if answer.len() as u64 > MAX_ANSWER_BYTES {
            return Err(format!("an answer over {MAX_ANSWER_BYTES} bytes"));
        }
        if head.is_none()
            && let Some(end) = head_end(&answer)
        {
            let (code, framing) = parse_head(&answer[..end])?;
            head = Some((end, code, framing));
        }
        if let Some((end, code, framing)) = &head {
            let body = &answer[*end..];
            match framing {
                Framing::Length(length) if body.len() >= *length => {
                    return Ok((*code, body[..*length].to_vec()));
                }
                Framing::Chunked => {
                    if let Some(body) = dechunk(body)? {
                        return Ok((*code, body));
                    }
                }
                Framing::UntilClose if read == 0 => return Ok((*code, body.to_vec())),
                _ => {}
            }
        }
        if read == 0 {
            return Err(match head {
                Some(_) => "the answer ended early".to_owned(),
                None => "the answer is not HTTP".to_owned(),
            });
        }
    }
}

/// Asks one service at `url` how it is.
pub async fn ask(service: ServiceName, url: &str, timeout: Duration) -> ServiceStatus {
    let outcome = |status: &str, error: Option<String>, health: Option<Value>| ServiceStatus {
        service,
        url: url.to_owned(),
        status: status.to_owned(),
        error,
        health,
    };
    let base = match parse_base_url(url) {
        Ok(base) => base,
        Err(error) => return outcome("unreachable", Some(format!("{url}: {error}")), None),
    };
    let (code, body) = match tokio::time::timeout(timeout, get_healthz(&base)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => return outcome("unreachable", Some(error), None),
        Err(_) => {
            return outcome(
                "unreachable",
                Some(format!("no answer within {timeout:?}")),
                None,
            );
        }
    };
    let health: Value = match serde_json::from_slice(&body) {
        Ok(health) if code == 200 => health,
        Ok(_) | Err(_) => {
            return outcome(
                "unexpected",
                Some(format!(
                    "GET /healthz answered {code} without a health document"
                )),
                None,
            );
        }
    };
    let Some(answered_by) = health["service"].as_str().map(str::to_owned) else {
        return outcome(
            "unexpected",
            Some("the answer is JSON but not a sentiflow health document".to_owned()),
            None,
        );
    };
    if answered_by != service.as_str() {
        return outcome(
            "unexpected",
            Some(format!(
                "answered by `{answered_by}`, not {}: are the addresses swapped?",
                service.as_str()
            )),
            Some(health),
        );
    }
    match health["status"].as_str() {
        Some(status @ ("ready" | "degraded" | "not_ready")) => {
            let status = status.to_owned();
            outcome(&status, None, Some(health))
        }
        other => outcome(
            "unexpected",
            Some(format!("an unknown status {other:?}")),
            Some(health),
        ),
    }
}

/// What `status` found: every service asked, and the exit status it makes.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// One entry per service asked, in the pipeline's order.
    pub services: Vec<ServiceStatus>,
    /// 0 every service ready, 1 one degraded at worst, 2 one not ready, unreachable or unexpected.
    pub exit_status: u8,
}

impl StatusReport {
    /// The table printed without `--json`, its columns as wide as their widest cell.
    pub fn table(&self) -> String {
        let status_width = self
            .services
            .iter()
            .map(|status| status.status.len())
            .chain(["STATUS".len()])
            .max()
            .unwrap_or(0);
        let url_width = self
            .services
            .iter()
            .map(|status| status.url.len())
            .chain(["URL".len()])
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8} {:<status_width$} {:<url_width$} CHECKS / NOTES",
            "SERVICE", "STATUS", "URL"
        );
        for status in &self.services {
            let notes = status.notes();
            let detail = if notes.is_empty() {
                status.checks_summary()
            } else {
                format!("{}; {notes}", status.checks_summary())
            };
            let _ = writeln!(
                out,
                "{:<8} {:<status_width$} {:<url_width$} {detail}",
                status.service.as_str(),
                status.status,
                status.url
            );
        }
        out
    }
}

/// Asks every service of `args` at once.
///
/// # Errors
/// A timeout that is not a positive number of seconds.
pub async fn report(args: &StatusArgs) -> anyhow::Result<StatusReport> {
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--timeout-secs must be a positive number of seconds, not {}",
                args.timeout_secs
            )
        })?;
    let asked: Vec<ServiceName> = if args.services.is_empty() {
        ServiceName::ALL.to_vec()
    } else {
        ServiceName::ALL
            .into_iter()
            .filter(|service| args.services.contains(service))
            .collect()
    };
    let services = futures::future::join_all(asked.into_iter().map(|service| {
        let url = match service {
            ServiceName::Ingest => &args.ingest_url,
            ServiceName::Infer => &args.infer_url,
            ServiceName::Trainer => &args.trainer_url,
            ServiceName::Drift => &args.drift_url,
        };
        ask(service, url.trim(), timeout)
    }))
    .await;
    let exit_status = services
        .iter()
        .map(ServiceStatus::severity)
        .max()
        .unwrap_or(0);
    Ok(StatusReport {
        services,
        exit_status,
    })
}

/// The exit status of `status` when it could not ask (a bad flag, a bad timeout): 3, "unknown" in the
/// 0 ok / 1 warning / 2 critical / 3 unknown convention of monitoring probes, so a script never reads a
/// failure to ask as a finding.
pub const EXIT_UNKNOWN: u8 = 3;

/// The exit status of a command that ran and found something to report (not an error of the command).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ExitStatus {
    /// The process exit status.
    pub code: u8,
    /// Said on stderr.
    pub message: String,
}

/// `sentiflow status`: prints the report; a service not ready makes the exit status non-zero.
///
/// # Errors
/// [`ExitStatus`] when a service is not ready; a bad `--timeout-secs`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let report = report(&args).await.map_err(|error| ExitStatus {
        code: EXIT_UNKNOWN,
        message: format!("error: {error:#}"),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let not_ready: Vec<String> = report
        .services
        .iter()
        .filter(|status| status.severity() > 0)
        .map(|status| format!("{} {}", status.service.as_str(), status.status))
        .collect();
    if report.exit_status == 0 {
        Ok(())
    } else {
        Err(ExitStatus {
            code: report.exit_status,
            message: format!("not every service is ready: {}", not_ready.join(", ")),
        }
        .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_taken_apart() {
        assert_eq!(
            parse_base_url("http://127.0.0.1:9101").unwrap(),
            BaseUrl {
                host: "127.0.0.1".to_owned(),
                port: 9101,
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_base_url("http://infer.sentiflow.svc/ops/").unwrap(),
            BaseUrl {
                host: "infer.sentiflow.svc".to_owned(),
                port: 80,
                prefix: "/ops".to_owned()
            }
        );
        assert_eq!(
            parse_base_url("http://[::1]:9102").unwrap(),
            BaseUrl {
                host: "::1".to_owned(),
                port: 9102,
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_base_url("HTTP://Ingest:9101").unwrap().host,
            "Ingest",
            "the scheme in any case"
        );
        for (url, says) in [
            ("https://a:1", "only http://"),
            ("127.0.0.1:9101", "only http://"),
            ("http://a:port", "not a port"),
            ("http://a:70000", "not a port"),
            ("http://a:0", "not a port"),
            ("http://a:1/?x=1", "no query"),
            ("http://::1", "in brackets"),
            ("http://:9101", "no host"),
            ("http://[::1", "closing"),
            ("http://[::1]x", "after the IPv6"),
        ] {
            let error = parse_base_url(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    #[test]
    fn the_host_header_brackets_ipv6_and_names_a_port_other_than_80() {
        let header = |url: &str| parse_base_url(url).unwrap().host_header();
        assert_eq!(header("http://[::1]:9102"), "[::1]:9102");
        assert_eq!(header("http://infer.sentiflow.svc"), "infer.sentiflow.svc");
        assert_eq!(header("http://10.0.0.7:9100/x"), "10.0.0.7:9100");
    }

    #[test]
    fn check_times_are_shown_to_the_second() {
        assert_eq!(
            to_the_second("2026-12-06T12:17:30.530538079Z"),
            "2026-12-06T12:17:30Z"
        );
        assert_eq!(to_the_second("not a time"), "not a time");
    }

    /// Serves `answer` to the first connection, then keeps it open (a server that ignores
    /// `Connection: close`) until the test ends.
    async fn serve_once(answer: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0_u8; 4096];
            let _ = stream.read(&mut request).await;
            stream.write_all(answer).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn answers_are_read_as_far_as_they_say_they_go() {
        let health =
            br#"{"service":"ingest","status":"ready","checks":{"kafka":{"ok":true}},"info":{}}"#;
        let timeout = Duration::from_secs(2);
        // Content-Length on a connection kept open: read to the length, not to a close.
        let mut sized = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            health.len()
        )
        .into_bytes();
        sized.extend_from_slice(health);
        let url = serve_once(sized.leak()).await;
        let status = ask(ServiceName::Ingest, &url, timeout).await;
        assert_eq!(status.status, "ready", "{status:?}");
        // Chunked, split mid-document.
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let (first, second) = health.split_at(20);
        for chunk in [first, second] {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let url = serve_once(chunked.leak()).await;
        let status = ask(ServiceName::Ingest, &url, timeout).await;
        assert_eq!(status.status, "ready", "{status:?}");
        assert_eq!(status.checks_summary(), "all 1 ok");

        let sized_answer = |status_line: &str, body: &str| -> &'static [u8] {
            format!(
                "{status_line}\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
            .leak()
        };
        for (answer, want, says) in [
            (
                &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
                "unreachable",
                "not HTTP",
            ),
            (
                sized_answer("HTTP/1.1 404 Not Found", "{}"),
                "unexpected",
                "answered 404",
            ),
            (
                sized_answer("HTTP/1.1 200 OK", "{}"),
                "unexpected",
                "not a sentiflow health document",
            ),
            (
                sized_answer("HTTP/1.1 200 OK", r#"{"service":"ingest","status":"ok"}"#),
                "unexpected",
                "unknown status",
            ),
            (
                // Fewer bytes than said, on a connection kept open.
                &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}"[..],
                "unreachable",
                "no answer within",
            ),
        ] {
            let url = serve_once(answer).await;
            let status = ask(ServiceName::Ingest, &url, Duration::from_millis(500)).await;
            assert_eq!(status.status, want, "{status:?}");
            assert!(
                status
                    .error
                    .as_deref()
                    .is_some_and(|error| error.contains(says)),
                "{says}: {status:?}"
            );
            assert_eq!(status.severity(), 2);
        }
    }

    fn status_of(health: Value) -> ServiceStatus {
        ServiceStatus {
            service: ServiceName::Infer,
            url: "http://127.0.0.1:9102".to_owned(),
            status: health["status"].as_str().unwrap().to_owned(),
            error: None,
            health: Some(health),
        }
    }

    #[test]
    fn the_table_names_failing_checks_and_what_infer_serves() {
        let degraded = status_of(serde_json::json!({
            "service": "infer",
            "status": "degraded",
            "checks": {
                "model": {"ok": true, "required": true, "detail": "serving sentiment v3"},
                "redis": {"ok": false, "required": false, "detail": "connection refused", "since": "2026-12-06T12:01:03Z"}
            },
            "info": {"device": "cpu", "model": {"name": "sentiment", "version": "v3", "family": "hashed"}}
        }));
        assert_eq!(degraded.severity(), 1);
        let unreachable = ServiceStatus {
            service: ServiceName::Drift,
            url: "http://127.0.0.1:9104".to_owned(),
            status: "unreachable".to_owned(),
            error: Some("connect: Connection refused".to_owned()),
            health: None,
        };
        assert_eq!(unreachable.severity(), 2);
        let report = StatusReport {
            services: vec![degraded, unreachable],
            exit_status: 2,
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("SERVICE"), "{table}");
        assert!(
            lines[1].starts_with("infer    degraded")
                && lines[1].contains(
                    "redis (optional) failing since 2026-12-06T12:01:03Z: connection refused"
                )
                && lines[1].contains("serving sentiment v3 (hashed on cpu)")
                && !lines[1].contains("model (required)"),
            "{table}"
        );
        assert!(
            lines[2].starts_with("drift    unreachable") && lines[2].contains("Connection refused"),
            "{table}"
        );
        let ready = status_of(serde_json::json!({
            "service": "infer", "status": "ready",
            "checks": {"model": {"ok": true}, "kafka": {"ok": true}}, "info": {}
        }));
        assert_eq!(ready.severity(), 0);
        assert_eq!(ready.checks_summary(), "all 2 ok");
    }
}
