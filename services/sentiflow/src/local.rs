//! Real local servers for `sentiflow up` and the integration tests: a single-node Apache Kafka broker
//! (KRaft) and a Redis server on loopback, started from the setup cache and never left orphaned.
//!
//! Orphan protection has two layers. Dropping (or [`KafkaServer::stop`]ping) a server sends SIGTERM,
//! waits a grace period, then SIGKILLs the process group and reaps it. If our own process dies without
//! unwinding (SIGKILL, `panic = "abort"`), the kernel kills the children: each is started with
//! `PR_SET_PDEATHSIG(SIGKILL)`. That signal fires when the *thread* that forked the child exits, and
//! test harnesses run every test on a short-lived thread, so all children are forked by one
//! process-lifetime spawner thread (see [`spawn`]) that never exits.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sentiflow_common::cache::{CacheDir, CacheError, KAFKA_VERSION};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

const POLL: Duration = Duration::from_millis(100);
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(60);
const KAFKA_STOP_GRACE: Duration = Duration::from_secs(10);
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(30);
const REDIS_STOP_GRACE: Duration = Duration::from_secs(3);
const LOG_TAIL_LINES: usize = 20;
const KAFKA_STATE_FILE: &str = "sentiflow-kafka.json";
/// Extra JVM options for the broker, whitespace-separated (like Kafka's `KAFKA_OPTS`).
pub const KAFKA_JVM_OPTS_ENV: &str = "SENTIFLOW_KAFKA_JVM_OPTS";

/// Errors starting or stopping a local server.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Something `infra/setup.sh` installs is missing.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A program we need is not on this machine.
    #[error("{program} not found: {hint}")]
    NotInstalled {
        /// The program we tried to run.
        program: String,
        /// How to get it.
        hint: &'static str,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A port we must use is taken.
    #[error("127.0.0.1:{port} is already in use ({why})")]
    PortInUse {
        /// The port.
        port: u16,
        /// Why this port and what to do about it.
        why: String,
    },
    /// The server process exited before it became ready.
    #[error("{what} exited during start-up ({status}); last lines of {}:\n{tail}", log.display())]
    EarlyExit {
        /// Which server.
        what: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// The server did not become ready in time (it has been killed).
    #[error("{what} not ready on 127.0.0.1:{port} after {}s ({detail}); last lines of {}:\n{tail}", timeout.as_secs(), log.display())]
    Timeout {
        /// Which server.
        what: &'static str,
        /// Its port.
        port: u16,
        /// How long we waited.
        timeout: Duration,
        /// The last thing the readiness probe saw.
        detail: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },
    /// A helper tool (Kafka's StorageTool) failed.
    #[error("{what} failed ({status}):\n{output}")]
    Tool {
        /// The tool invocation.
        what: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its combined output.
        output: String,
    },
    /// The state file in a data directory is unreadable.
    #[error("bad state file {}: {reason}; delete the data directory to start afresh", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A readiness probe or command to a running server failed.
    #[error("{what} on 127.0.0.1:{port}: {detail}")]
    Probe {
        /// Which server.
        what: &'static str,
        /// Its port.
        port: u16,
        /// What went wrong.
        detail: String,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LocalError {
    move |source| LocalError::Io {
        context: context.into(),
        source,
    }
}

// ------------------------------------------------------------------------------------------ spawning

type SpawnReply = mpsc::Sender<io::Result<Child>>;

/// Spawns `cmd` on the process-lifetime spawner thread, in its own process group, with
/// `PR_SET_PDEATHSIG(SIGKILL)`, so the child dies with this process however it ends.
fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SPAWNER: Mutex<Option<mpsc::Sender<(Command, SpawnReply)>>> = Mutex::new(None);
    let spawner = {
        let mut guard = SPAWNER.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_ref() {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel::<(Command, SpawnReply)>();
                // The static keeps a sender, so `recv` never fails and the thread never exits:
                // children it forks keep their parent thread for the life of the process.
                std::thread::Builder::new()
                    .name("sentiflow-spawner".into())
                    .spawn(move || {
                        while let Ok((mut cmd, reply)) = rx.recv() {
                            let _ = reply.send(cmd.spawn());
                        }
                    })?;
                guard.insert(tx).clone()
            }
        }
    };
    cmd.process_group(0);
    die_with_parent(&mut cmd);
    let gone = || io::Error::other("the sentiflow-spawner thread is gone");
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner.send((cmd, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

/// Makes the child receive SIGKILL when its parent thread (the spawner, which lives as long as the
/// process) goes away.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec. It only makes the async-signal-safe
    // system calls prctl(2) and getppid(2), touches no locks and does not allocate (both error values
    // are built from raw OS error codes).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then no signal would ever come.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to `pid` (a negative pid addresses a process group).
#[allow(unsafe_code)]
fn send_signal(pid: i32, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions. Callers only signal children they have not
    // reaped yet, so the pid (and the process group it leads) cannot have been reused.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A child process that is stopped (SIGTERM, grace, SIGKILL to its group, reap) on drop.
#[derive(Debug)]
struct ManagedChild {
    what: &'static str,
    child: Mutex<Option<Child>>,
    pid: u32,
    grace: Duration,
}

impl ManagedChild {
    fn new(what: &'static str, child: Child, grace: Duration) -> Self {
        Self {
            what,
            pid: child.id(),
            child: Mutex::new(Some(child)),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `Some(status)` once the process has exited (it is then reaped), `None` while it runs.
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                *guard = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                warn!(what = self.what, pid = self.pid, error = %e, "cannot poll child process");
                None
            }
        }
    }

    fn is_running(&self) -> bool {
        let mut guard = self.lock();
        match guard.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => {
                *guard = None;
                false
            }
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Stops the process if it still runs; idempotent.
    fn stop(&self) -> Result<(), LocalError> {
        let mut guard = self.lock();
        let Some(child) = guard.as_mut() else {
            return Ok(());
        };
        let pid = self.pid as i32;
        let started = Instant::now();
        if child.try_wait().map_err(io_err("polling child"))?.is_none() {
            // ESRCH here means it exited in between: the wait below reaps it.
            let _ = send_signal(pid, libc::SIGTERM);
            let deadline = started + self.grace;
            while Instant::now() < deadline {
                if child.try_wait().map_err(io_err("polling child"))?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The group (leader = pid, unreaped so its id cannot be reused) also holds any helper the
        // server forked; SIGKILL whatever is left of it.
        let _ = send_signal(-pid, libc::SIGKILL);
        let status = child
            .wait()
            .map_err(io_err(format!("waiting for {} (pid {pid})", self.what)))?;
        *guard = None;
        info!(what = self.what, pid, %status, elapsed_ms = started.elapsed().as_millis() as u64, "stopped");
        Ok(())
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            warn!(what = self.what, pid = self.pid, error = %e, "could not stop child process");
        }
    }
}

// ---------------------------------------------------------------------------------------- utilities

/// Reserves a loopback port: the given one (an error if taken) or a free one chosen by the kernel.
/// The returned listener holds it until dropped, right before the server is spawned.
fn reserve_port(port: Option<u16>, why: &str) -> Result<TcpListener, LocalError> {
    // Ports handed out earlier in this process are skipped so two servers started concurrently
    // cannot receive the same port between its release and the server's bind.
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let loopback = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.unwrap_or(0));
    if let Some(port) = port {
        return TcpListener::bind(loopback).map_err(|e| LocalError::PortInUse {
            port,
            why: format!("{why}: {e}"),
        });
    }
    let mut held = Vec::new();
    for _ in 0..32 {
        let listener =
            TcpListener::bind(loopback).map_err(io_err("binding a free loopback port"))?;
        let port = listener
            .local_addr()
            .map_err(io_err("reading a bound port"))?
            .port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(listener);
        }
        held.push(listener); // keep it bound so the next bind gets another port
    }
    Err(io_err("finding a free loopback port")(io::Error::other(
        "32 candidates were all handed out before",
    )))
}

fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or(0)
}

/// Opens `path` for appending and writes a marker line, so a log kept across restarts shows where
/// each run begins.
fn open_log(path: &Path, what: &str) -> Result<File, LocalError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    writeln!(
        file,
        "==== sentiflow: starting {what} at {} ====",
        chrono::Utc::now().to_rfc3339()
    )
    .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(file)
}

/// The last `n` lines of a (possibly large) log file.
fn log_tail(path: &Path, n: usize) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().collect();
        Ok(lines[lines.len().saturating_sub(n)..].join("\n"))
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

fn spawn_logged(cmd: Command, program: &str, hint: &'static str) -> Result<Child, LocalError> {
    spawn(cmd).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            LocalError::NotInstalled {
                program: program.to_owned(),
                hint,
            }
        } else {
            io_err(format!("spawning {program}"))(e)
        }
    })
}

/// `-XX:SharedArchiveFile=<libs>/../kafka.jsa` when `infra/setup.sh` made that class-data-sharing
/// archive (it roughly halves the JVM's start-up CPU). A stale archive (other JVM) is only ignored by
/// the JVM, with a warning in the log.
fn cds_archive_arg(libs: &Path) -> Option<String> {
    let archive = libs.parent()?.join("kafka.jsa");
    archive
        .is_file()
        .then(|| format!("-XX:SharedArchiveFile={}", archive.display()))
}

fn java_binary() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("java"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("java"))
}

const JAVA_HINT: &str = "install a JDK >= 17 (infra/setup.sh checks for it) or set JAVA_HOME";

// -------------------------------------------------------------------------------------------- Kafka

/// Options for [`KafkaServer::start`].
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Directory with the broker's runtime classpath ([`CacheDir::kafka_libs`]).
    pub libs_dir: PathBuf,
    /// log4j2 configuration; `None` leaves log4j at its default (errors only).
    pub log4j_config: Option<PathBuf>,
    /// Where the broker keeps its configuration, KRaft metadata, logs and `kafka.log`; reused (and
    /// its ports kept) when it already holds a formatted broker.
    pub data_dir: PathBuf,
    /// Client (PLAINTEXT) port; `None` picks a free one, or the recorded one for a reused data dir.
    pub port: Option<u16>,
    /// JVM heap (`-Xms` = `-Xmx`) in MiB.
    pub heap_mb: u32,
    /// Default partition count for topics created without one.
    pub num_partitions: u32,
}

impl KafkaOptions {
    /// Defaults (free port, 512 MiB heap, 1 partition) with the given jars and data directory.
    pub fn new(libs_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            libs_dir: libs_dir.into(),
            log4j_config: None,
            data_dir: data_dir.into(),
            port: None,
            heap_mb: 512,
            num_partitions: 1,
        }
    }

    /// Defaults using the jars and log4j configuration installed by `infra/setup.sh`; fails with
    /// "Kafka jars not found at …; run infra/setup.sh" when they are missing.
    pub fn from_cache(cache: &CacheDir, data_dir: impl Into<PathBuf>) -> Result<Self, LocalError> {
        let libs = cache.require(cache.kafka_libs(), &format!("Kafka {KAFKA_VERSION} jars"))?;
        let log4j = cache.require(cache.kafka_log4j_config(), "Kafka log4j2 configuration")?;
        Ok(Self {
            log4j_config: Some(log4j),
            ..Self::new(libs, data_dir)
        })
    }
}

/// What a data directory remembers between runs, so a reused broker keeps its addresses.
#[derive(Debug, Serialize, Deserialize)]
struct KafkaState {
    port: u16,
    controller_port: u16,
    cluster_id: String,
}

/// A real Apache Kafka broker (KRaft, combined broker + controller, single node) on loopback.
#[derive(Debug)]
pub struct KafkaServer {
    process: ManagedChild,
    port: u16,
    controller_port: u16,
    data_dir: PathBuf,
    log_path: PathBuf,
    startup: Duration,
    formatted_now: bool,
}

impl KafkaServer {
    /// Formats `data_dir` if needed, starts the broker and waits until it answers a Kafka
    /// `ApiVersions` request (poll every 100 ms, 60 s at most).
    pub fn start(opts: KafkaOptions) -> Result<KafkaServer, LocalError> {
        let libs = &opts.libs_dir;
        if !libs
            .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
            .is_file()
        {
            return Err(CacheError::Missing {
                what: format!("Kafka {KAFKA_VERSION} jars"),
                path: libs.clone(),
            }
            .into());
        }
        let data_dir = &opts.data_dir;
        fs::create_dir_all(data_dir).map_err(io_err(format!("creating {}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", data_dir.display())))?;
        let log_dirs = data_dir.join("kraft-logs");
        let state_path = data_dir.join(KAFKA_STATE_FILE);
        let formatted = log_dirs.join("meta.properties").is_file();
        let state = if formatted {
            read_state(&state_path)?
        } else {
            None
        };

        // Reserve ports (held until right before the spawn).
        let (listener, controller_listener, cluster_id) = match state {
            Some(state) => {
                let why = format!(
                    "recorded in {} for the broker in this data directory; stop what uses it, or \
                     delete the data directory to start afresh",
                    state_path.display()
                );
                let client_port = opts.port.unwrap_or(state.port);
                let l = reserve_port(Some(client_port), &why)?;
                let c = reserve_port(Some(state.controller_port), &why)?;
                (l, c, state.cluster_id)
            }
            None => {
                if formatted {
                    warn!(dir = %data_dir.display(), "formatted Kafka data directory without a state file: choosing new ports");
                }
                let l = reserve_port(opts.port, "requested Kafka port")?;
                let c = reserve_port(None, "")?;
                (l, c, new_cluster_id())
            }
        };
        let port = port_of(&listener);
        let controller_port = port_of(&controller_listener);

        let properties = data_dir.join("server.properties");
        fs::write(
            &properties,
            server_properties(port, controller_port, &log_dirs, opts.num_partitions),
        )
        .map_err(io_err(format!("writing {}", properties.display())))?;
        write_state(
            &state_path,
            &KafkaState {
                port,
                controller_port,
                cluster_id: cluster_id.clone(),
            },
        )?;

        let log_path = data_dir.join("kafka.log");
        let format_start = Instant::now();
        if !formatted {
            format_storage(libs, &cluster_id, &properties, &log_path)?;
            info!(dir = %log_dirs.display(), cluster_id, elapsed_ms = format_start.elapsed().as_millis() as u64, "formatted Kafka storage");
        }

        let mut cmd = Command::new(java_binary());
        cmd.arg(format!("-Xmx{}m", opts.heap_mb))
            .arg(format!("-Xms{}m", opts.heap_mb))
            .arg("-XX:+UseG1GC")
            .arg("-XX:MaxGCPauseMillis=20")
            .arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dkafka.logs.dir={}",
                data_dir.join("logs").display()
            ));
        cmd.args(cds_archive_arg(libs));
        if let Some(config) = &opts.log4j_config {
            cmd.arg(format!("-Dlog4j2.configurationFile={}", config.display()));
        }
        // Escape hatch in the spirit of KAFKA_OPTS (debugger, GC logging, ...): whitespace-separated.
        if let Some(extra) = std::env::var_os(KAFKA_JVM_OPTS_ENV) {
            cmd.args(extra.to_string_lossy().split_whitespace());
        }
        let log = open_log(&log_path, "Kafka")?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        cmd.arg("-cp")
            .arg(libs.join("*"))
            .arg("kafka.Kafka")
            .arg(&properties)
            .current_dir(&data_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);

        drop(listener);
        drop(controller_listener);
        let spawned = Instant::now();
        let child = spawn_logged(cmd, "java", JAVA_HINT)?;
        let process = ManagedChild::new("kafka", child, KAFKA_STOP_GRACE);
        debug!(pid = process.pid, port, controller_port, "spawned Kafka");

        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = spawned + KAFKA_START_TIMEOUT;
        let mut tcp_open = None;
        let mut detail: String;
        loop {
            if let Some(status) = process.exit_status() {
                return Err(LocalError::EarlyExit {
                    what: "Kafka",
                    status,
                    tail: log_tail(&log_path, LOG_TAIL_LINES),
                    log: log_path,
                });
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => {
                    tcp_open.get_or_insert_with(|| spawned.elapsed());
                    match kafka_api_versions(stream) {
                        Ok(()) => break,
                        Err(e) => detail = format!("port open, ApiVersions: {e}"),
                    }
                }
                Err(e) => detail = format!("connect: {e}"),
            }
            if Instant::now() >= deadline {
                drop(process); // stops it
                return Err(LocalError::Timeout {
                    what: "Kafka",
                    port,
                    timeout: KAFKA_START_TIMEOUT,
                    detail,
                    tail: log_tail(&log_path, LOG_TAIL_LINES),
                    log: log_path,
                });
            }
            std::thread::sleep(POLL);
        }
        let startup = spawned.elapsed();
        info!(
            pid = process.pid,
            bootstrap = %addr,
            tcp_open_ms = tcp_open.unwrap_or(startup).as_millis() as u64,
            ready_ms = startup.as_millis() as u64,
            formatted = !formatted,
            "Kafka broker ready"
        );
        Ok(KafkaServer {
            process,
            port,
            controller_port,
            data_dir,
            log_path,
            startup,
            formatted_now: !formatted,
        })
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client (PLAINTEXT) port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The KRaft controller port (not for clients).
    pub fn controller_port(&self) -> u16 {
        self.controller_port
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    /// The data directory (canonical path).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Time from spawning the JVM until the broker answered (formatting not included).
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// Whether this start formatted a fresh data directory.
    pub fn formatted_now(&self) -> bool {
        self.formatted_now
    }

    /// Whether the broker process is still alive.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Stops the broker (SIGTERM, up to 10 s for a controlled shutdown, then SIGKILL); idempotent.
    pub fn stop(&mut self) -> Result<(), LocalError> {
        self.process.stop()
    }

    /// The broker's stdout/stderr (`<data_dir>/kafka.log`, appended across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }
}

fn server_properties(
    port: u16,
    controller_port: u16,
    log_dirs: &Path,
    num_partitions: u32,
) -> String {
    format!(
        "# Generated by sentiflow (services/sentiflow/src/local.rs) on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dirs}
num.partitions={num_partitions}
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=30000
# Small single-node broker on a laptop or CI box: few threads, quick registration and heartbeats.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=6000
controller.quorum.election.timeout.ms=500
controller.quorum.fetch.timeout.ms=1000
",
        log_dirs = log_dirs.display()
    )
}

fn read_state(path: &Path) -> Result<Option<KafkaState>, LocalError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| LocalError::State {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

fn write_state(path: &Path, state: &KafkaState) -> Result<(), LocalError> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(state).map_err(|e| LocalError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    fs::write(&tmp, json).map_err(io_err(format!("writing {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
}

/// A Kafka cluster id, as `kafka-storage.sh random-uuid` makes it (base64url of 16 random bytes, not
/// starting with '-'), generated here to save a JVM start.
fn new_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut bits: u32 = 0;
        let mut nbits = 0;
        let mut out = String::with_capacity(22);
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
            }
        }
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
        if !out.starts_with('-') {
            return out;
        }
    }
}

/// `kafka.tools.StorageTool format` for a static-quorum single node (no `--standalone`).
fn format_storage(
    libs: &Path,
    cluster_id: &str,
    properties: &Path,
    log_path: &Path,
) -> Result<(), LocalError> {
    let mut cmd = Command::new(java_binary());
    // A short-lived tool: small heap, serial GC and C1 only start fastest.
    cmd.args(cds_archive_arg(libs))
        .args([
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
        ])
        .arg("-cp")
        .arg(libs.join("*"))
        .arg("kafka.tools.StorageTool")
        .args(["format", "-t", cluster_id, "-c"])
        .arg(properties)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn_logged(cmd, "java", JAVA_HINT)?;
    let out = child
        .wait_with_output()
        .map_err(io_err("waiting for kafka.tools.StorageTool format"))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if let Ok(mut log) = OpenOptions::new().create(true).append(true).open(log_path) {
        let _ = writeln!(
            log,
            "==== sentiflow: StorageTool format ====\n{}",
            text.trim_end()
        );
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalError::Tool {
            what: format!("kafka.tools.StorageTool format -c {}", properties.display()),
            status: out.status,
            output: text,
        })
    }
}

/// Sends an `ApiVersions` v0 request and waits for its response: once the broker answers one, it
/// processes requests (an open port alone does not prove that).
fn kafka_api_versions(mut stream: TcpStream) -> io::Result<()> {
    const CORRELATION_ID: i32 = 0x5e47_1f10;
    let client_id = b"sentiflow-local";
    let mut request = Vec::with_capacity(32);
    request.extend_from_slice(&18i16.to_be_bytes()); // api key: ApiVersions
    request.extend_from_slice(&0i16.to_be_bytes()); // api version 0
    request.extend_from_slice(&CORRELATION_ID.to_be_bytes());
    request.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    request.extend_from_slice(client_id);
    let mut frame = (request.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&request);
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(&frame)?;
    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let size = i32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let correlation = i32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if correlation != CORRELATION_ID || size < 4 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "unexpected ApiVersions response (size {size}, correlation id {correlation:#x})"
            ),
        ));
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------- Redis

/// Options for [`RedisServer::start`].
#[derive(Clone)]
pub struct RedisOptions {
    /// Working directory (append-only files) and `redis.log`.
    pub data_dir: PathBuf,
    /// Port; `None` picks a free one.
    pub port: Option<u16>,
    /// `requirepass`; passed on stdin, never on the command line.
    pub password: Option<String>,
    /// Append-only persistence (on for `up`, so nothing is lost on restart; off in tests).
    pub persistence: bool,
}

impl RedisOptions {
    /// A free port, no password, no persistence.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: None,
            password: None,
            persistence: false,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("persistence", &self.persistence)
            .finish()
    }
}

/// Debian's `redis-server` on loopback with its own directory and no system configuration.
#[derive(Debug)]
pub struct RedisServer {
    opts: RedisOptions,
    port: u16,
    log_path: PathBuf,
    process: Option<ManagedChild>,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers PING (with AUTH when a password is set).
    pub fn start(opts: RedisOptions) -> Result<RedisServer, LocalError> {
        fs::create_dir_all(&opts.data_dir)
            .map_err(io_err(format!("creating {}", opts.data_dir.display())))?;
        let log_path = opts.data_dir.join("redis.log");
        let mut server = RedisServer {
            port: 0,
            log_path,
            process: None,
            opts,
        };
        server.launch(server.opts.port, "requested Redis port")?;
        Ok(server)
    }

    fn launch(&mut self, port: Option<u16>, why: &str) -> Result<(), LocalError> {
        let listener = reserve_port(port, why)?;
        let port = port_of(&listener);
        let mut cmd = Command::new("redis-server");
        // "-" reads extra configuration from stdin: that is where the password goes.
        cmd.arg("-")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&self.opts.data_dir)
            .args(["--save", ""])
            .args([
                "--appendonly",
                if self.opts.persistence { "yes" } else { "no" },
            ])
            .args([
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                "--supervised",
                "no",
            ])
            .current_dir(&self.opts.data_dir);
        let log = open_log(&self.log_path, "Redis")?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        cmd.stdin(Stdio::piped()).stdout(log).stderr(log_err);

        drop(listener);
        let spawned = Instant::now();
        let mut child = spawn_logged(
            cmd,
            "redis-server",
            "install the Debian package redis-server (infra/setup.sh does)",
        )?;
        let stdin = child.stdin.take();
        let process = ManagedChild::new("redis", child, REDIS_STOP_GRACE);
        if let Some(mut stdin) = stdin {
            let mut config = String::new();
            if let Some(password) = &self.opts.password {
                config = format!("requirepass {}\n", redis_quote(password));
            }
            // Dropping stdin sends EOF, which ends redis-server's configuration read.
            stdin
                .write_all(config.as_bytes())
                .map_err(io_err("writing redis-server's configuration to its stdin"))?;
        }
        self.port = port;

        let deadline = spawned + REDIS_START_TIMEOUT;
        let mut detail: String;
        loop {
            if let Some(status) = process.exit_status() {
                return Err(LocalError::EarlyExit {
                    what: "Redis",
                    status,
                    log: self.log_path.clone(),
                    tail: log_tail(&self.log_path, LOG_TAIL_LINES),
                });
            }
            match redis_ping(port, self.opts.password.as_deref()) {
                Ok(()) => break,
                Err(e) => detail = e,
            }
            if Instant::now() >= deadline {
                drop(process);
                return Err(LocalError::Timeout {
                    what: "Redis",
                    port,
                    timeout: REDIS_START_TIMEOUT,
                    detail,
                    log: self.log_path.clone(),
                    tail: log_tail(&self.log_path, LOG_TAIL_LINES),
                });
            }
            std::thread::sleep(POLL);
        }
        info!(
            pid = process.pid,
            port,
            ready_ms = spawned.elapsed().as_millis() as u64,
            "Redis ready"
        );
        self.process = Some(process);
        Ok(())
    }

    /// `redis://[:password@]127.0.0.1:<port>/` (the password percent-encoded).
    pub fn url(&self) -> String {
        match &self.opts.password {
            Some(pw) => format!("redis://:{}@127.0.0.1:{}/", percent_encode(pw), self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The port (kept across [`RedisServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// `<data_dir>/redis.log`, appended across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// PING (after AUTH when a password is set) over a raw connection.
    pub fn ping(&self) -> Result<(), LocalError> {
        redis_ping(self.port, self.opts.password.as_deref()).map_err(|detail| LocalError::Probe {
            what: "Redis",
            port: self.port,
            detail,
        })
    }

    /// Stops the server (SIGTERM, up to 3 s, then SIGKILL); idempotent.
    pub fn stop(&mut self) -> Result<(), LocalError> {
        match self.process.take() {
            Some(process) => process.stop(),
            None => Ok(()),
        }
    }

    /// Stops and starts again on the same port (for outage tests); data survives only with
    /// persistence.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.stop()?;
        self.launch(
            Some(self.port),
            "Redis restart needs its previous port, which something else took meanwhile",
        )
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(ManagedChild::is_running)
    }
}

/// A redis.conf double-quoted string with every byte hex-escaped (redis' `sdssplitargs` syntax).
fn redis_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 4 + 2);
    out.push('"');
    for b in s.bytes() {
        out.push_str(&format!("\\x{b:02x}"));
    }
    out.push('"');
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a command as a RESP array of bulk strings.
fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one line-shaped RESP reply (`+OK`, `-ERR …`, `:1`, or the header of a bulk string).
fn read_line(stream: &mut TcpStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        line.push(byte[0]);
        if line.len() > 64 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "reply line too long",
            ));
        }
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn redis_connect(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

fn redis_ping(port: u16, password: Option<&str>) -> Result<(), String> {
    let mut stream = redis_connect(port).map_err(|e| format!("connect: {e}"))?;
    if let Some(password) = password {
        stream
            .write_all(&resp_command(&[b"AUTH", password.as_bytes()]))
            .map_err(|e| format!("AUTH: {e}"))?;
        let reply = read_line(&mut stream).map_err(|e| format!("AUTH: {e}"))?;
        if reply != "+OK" {
            return Err(format!("AUTH answered {reply}"));
        }
    }
    stream
        .write_all(b"PING\r\n")
        .map_err(|e| format!("PING: {e}"))?;
    match read_line(&mut stream).map_err(|e| format!("PING: {e}"))? {
        reply if reply == "+PONG" => Ok(()),
        reply => Err(format!("PING answered {reply}")), // e.g. -LOADING while reading the AOF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("sentiflow-local-{tag}-{}", uuid::Uuid::new_v4()));
            fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Whether `pid` is a live process (a zombie waiting for a reaper counts as gone).
    fn alive(pid: u32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => !matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.trim_start().chars().next()),
                Some('Z' | 'X')
            ),
            Err(_) => false,
        }
    }

    fn wait_gone(pid: u32, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !alive(pid)
    }

    /// The setup cache, or a failure (not a skip) that says to run infra/setup.sh.
    fn kafka_options(data_dir: &Path) -> KafkaOptions {
        let cache = CacheDir::from_env().unwrap_or_else(|e| panic!("{e}"));
        KafkaOptions::from_cache(&cache, data_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    fn broker_ids(bootstrap: &str) -> Vec<(i32, String, i32)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "sentiflow-local-test")
            .create()
            .expect("rdkafka consumer");
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(15))
            .expect("metadata from the local broker");
        metadata
            .brokers()
            .iter()
            .map(|b| (b.id(), b.host().to_owned(), b.port()))
            .collect()
    }

    fn redis_call(port: u16, password: &str, args: &[&[u8]]) -> String {
        let mut stream = redis_connect(port).unwrap();
        stream
            .write_all(&resp_command(&[b"AUTH", password.as_bytes()]))
            .unwrap();
        assert_eq!(read_line(&mut stream).unwrap(), "+OK");
        stream.write_all(&resp_command(args)).unwrap();
        let head = read_line(&mut stream).unwrap();
        if head.starts_with('$') && head != "$-1" {
            let value = read_line(&mut stream).unwrap();
            format!("{head} {value}")
        } else {
            head
        }
    }

    #[test]
    fn kafka_starts_formats_answers_metadata_and_stops_cold_and_warm() {
        let dir = TempDir::new("kafka");
        let opts = kafka_options(&dir.0);

        let t = Instant::now();
        let mut kafka = KafkaServer::start(opts.clone()).unwrap_or_else(|e| panic!("{e}"));
        let cold_total = t.elapsed();
        assert!(kafka.formatted_now());
        assert!(kafka.is_running());
        let brokers = broker_ids(&kafka.bootstrap_servers());
        assert_eq!(
            brokers,
            vec![(1, "127.0.0.1".to_owned(), i32::from(kafka.port()))]
        );
        let (port, pid) = (kafka.port(), kafka.pid());
        let cold = kafka.startup_time();
        let t = Instant::now();
        kafka.stop().unwrap();
        let stop_time = t.elapsed();
        assert!(!kafka.is_running());
        assert!(
            wait_gone(pid, Duration::from_secs(2)),
            "kafka pid {pid} still alive after stop"
        );
        kafka.stop().unwrap(); // idempotent

        // Reuse: no format, same ports from the state file.
        let kafka = KafkaServer::start(opts).unwrap_or_else(|e| panic!("{e}"));
        assert!(!kafka.formatted_now());
        assert_eq!(kafka.port(), port);
        assert_eq!(broker_ids(&kafka.bootstrap_servers()).len(), 1);
        let warm = kafka.startup_time();
        let pid = kafka.pid();
        drop(kafka); // Drop stops it too
        assert!(
            wait_gone(pid, Duration::from_secs(2)),
            "kafka pid {pid} still alive after drop"
        );

        // Not logging: these are the numbers a developer running the test wants to see.
        eprintln!(
            "kafka start: cold spawn->ready {cold:?} (with format {cold_total:?}), warm spawn->ready {warm:?}, stop {stop_time:?}"
        );
    }

    #[test]
    fn kafka_reused_dir_with_taken_port_is_a_clear_error() {
        let dir = TempDir::new("kafka-taken");
        let opts = kafka_options(&dir.0);
        let mut kafka = KafkaServer::start(opts.clone()).unwrap_or_else(|e| panic!("{e}"));
        let port = kafka.port();
        kafka.stop().unwrap();
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        let err = KafkaServer::start(opts).unwrap_err();
        drop(squatter);
        let msg = err.to_string();
        assert!(
            matches!(err, LocalError::PortInUse { port: p, .. } if p == port),
            "{msg}"
        );
        assert!(msg.contains(KAFKA_STATE_FILE), "{msg}");
    }

    #[test]
    fn kafka_missing_jars_name_the_setup_script() {
        let dir = TempDir::new("kafka-nojars");
        let err = KafkaServer::start(KafkaOptions::new(dir.0.join("libs"), dir.0.join("data")))
            .unwrap_err();
        assert!(err.to_string().ends_with("; run infra/setup.sh"), "{err}");
        let err = KafkaOptions::from_cache(&CacheDir::new(&dir.0), dir.0.join("data")).unwrap_err();
        assert!(
            err.to_string().contains("Kafka 4.4.0 jars not found at"),
            "{err}"
        );
    }

    #[test]
    fn kafka_cluster_ids_look_like_kafkas() {
        for _ in 0..200 {
            let id = new_cluster_id();
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }

    #[test]
    fn redis_with_password_pings_restarts_on_same_port_and_stops() {
        let dir = TempDir::new("redis");
        let password = "p@ss word/\"x\"";
        let mut redis = RedisServer::start(RedisOptions {
            password: Some(password.into()),
            ..RedisOptions::new(&dir.0)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let port = redis.port();
        assert!(redis.is_running());
        redis.ping().unwrap();
        assert_eq!(
            redis.url(),
            format!("redis://:p%40ss%20word%2F%22x%22@127.0.0.1:{port}/")
        );
        assert!(
            !format!("{redis:?}").contains("p@ss"),
            "password leaked into Debug"
        );
        // Without AUTH the server refuses.
        assert!(redis_ping(port, None).unwrap_err().contains("NOAUTH"));
        // And the password is not on its command line.
        let pid = redis.pid().unwrap();
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains("p@ss"));

        assert_eq!(redis_call(port, password, &[b"SET", b"k", b"v"]), "+OK");
        redis.restart().unwrap();
        assert_eq!(redis.port(), port);
        assert_ne!(redis.pid(), Some(pid));
        assert!(wait_gone(pid, Duration::from_secs(2)));
        redis.ping().unwrap();
        // Persistence off: the restart lost the key.
        assert_eq!(redis_call(port, password, &[b"GET", b"k"]), "$-1");

        let pid = redis.pid().unwrap();
        redis.stop().unwrap();
        assert!(!redis.is_running());
        assert!(redis.ping().is_err());
        assert!(wait_gone(pid, Duration::from_secs(2)));
        redis.stop().unwrap(); // idempotent
    }

    #[test]
    fn redis_persistence_keeps_data_across_restart() {
        let dir = TempDir::new("redis-aof");
        let mut redis = RedisServer::start(RedisOptions {
            password: Some("pw".into()),
            persistence: true,
            ..RedisOptions::new(&dir.0)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            redis_call(redis.port(), "pw", &[b"SET", b"k", b"kept"]),
            "+OK"
        );
        redis.restart().unwrap();
        assert_eq!(redis_call(redis.port(), "pw", &[b"GET", b"k"]), "$4 kept");
    }

    #[test]
    fn panicking_owner_thread_stops_its_server() {
        let dir = TempDir::new("redis-panic");
        let (tx, rx) = mpsc::channel();
        let data_dir = dir.0.clone();
        let owner = std::thread::spawn(move || {
            let redis = RedisServer::start(RedisOptions::new(data_dir)).unwrap();
            tx.send(redis.pid().unwrap()).unwrap();
            panic!("owner thread panics while holding the server");
        });
        assert!(owner.join().is_err());
        let pid = rx.recv().unwrap();
        assert!(
            wait_gone(pid, Duration::from_secs(5)),
            "redis pid {pid} outlived its panicking owner"
        );
    }

    const HELPER_ENV: &str = "SENTIFLOW_LOCAL_TEST_PDEATHSIG_HELPER";

    /// Run as a separate process by `killed_process_takes_its_children_along`: starts Redis from a
    /// short-lived thread, checks it survived that thread's exit, reports the pid and waits to be killed.
    #[test]
    #[ignore = "helper process for killed_process_takes_its_children_along"]
    fn pdeathsig_helper() {
        let Some(dir) = std::env::var_os(HELPER_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let redis = std::thread::spawn({
            let dir = dir.clone();
            move || RedisServer::start(RedisOptions::new(dir)).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        redis
            .ping()
            .expect("redis died with the thread that started it");
        fs::write(dir.join("pid.tmp"), redis.pid().unwrap().to_string()).unwrap();
        fs::rename(dir.join("pid.tmp"), dir.join("pid")).unwrap();
        std::thread::sleep(Duration::from_secs(120));
    }

    #[test]
    fn killed_process_takes_its_children_along() {
        let dir = TempDir::new("redis-sigkill");
        let mut helper = Command::new(std::env::current_exe().unwrap())
            .args([
                "local::tests::pdeathsig_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, &dir.0)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid_file = dir.0.join("pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pid_file.exists() {
            if let Some(status) = helper.try_wait().unwrap() {
                panic!("helper exited early: {status}");
            }
            assert!(Instant::now() < deadline, "helper did not start redis");
            std::thread::sleep(Duration::from_millis(50));
        }
        let redis_pid: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(redis_pid));
        helper.kill().unwrap(); // SIGKILL: no destructors run in the helper
        helper.wait().unwrap();
        assert!(
            wait_gone(redis_pid, Duration::from_secs(5)),
            "redis pid {redis_pid} survived the SIGKILL of its parent process"
        );
    }
}
