//! Checks that keep the deployment files honest without a Docker engine or a cluster: the compose files
//! parse (base, secure override, gpu profile), every service binary has an image, a compose service and a
//! k8s workload, every `SENTIFLOW_*` variable they set is a real flag of the binary it configures, ports and
//! health paths agree with the services' defaults and routes, KEDA watches the real consumer groups, the
//! k8s YAML passes a strict schema check (which fails on a real mistake), secrets and mounts referenced exist
//! (the API keys file in a whole-directory secret mount), and the Redis TLS flags work
//! against a TLS-only Redis with the certificates of infra/tls/gen-certs.sh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;
use sentiflow_common::cache::{CACHE_DIR_ENV, CacheDir};
use sentiflow_common::catalogue::Catalogue;
use serde_json::Value;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

// ------------------------------------------------------------------------------------------------ inputs

/// The secrets the compose files require, set to test values.
const COMPOSE_SECRETS: [(&str, &str); 4] = [
    ("REDIS_PASSWORD", "test-password"),
    (
        "SENTIFLOW_AUTHOR_HASH_KEY",
        "test-author-hash-key-0123456789",
    ),
    ("GRAFANA_ADMIN_PASSWORD", "test-grafana"),
    ("KAFKA_SASL_PASSWORD", "test-scram"),
];

/// `docker-compose [--profile P] -f F… config` with the secrets set; Err(stderr) when it refuses.
fn compose_config(files: &[&str], profile: Option<&str>, secrets: bool) -> Result<String, String> {
    let mut command = Command::new("docker-compose");
    command
        .current_dir(repo_root())
        .env_remove("COMPOSE_PROFILES");
    for (name, _) in COMPOSE_SECRETS {
        command.env_remove(name);
    }
    if secrets {
        command.envs(COMPOSE_SECRETS);
    }
    if let Some(profile) = profile {
        command.args(["--profile", profile]);
    }
    for file in files {
        command.args(["-f", file]);
    }
    let output = command
        .arg("config")
        .output()
        .expect("docker-compose (Debian's package; infra/setup.sh installs it)");
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The Python environment of infra/k8s/validate.py (kubernetes-validate, PyYAML), installed by setup.
fn validator() -> Command {
    let cache = CacheDir::from_env().expect("cache dir");
    let dir = cache.root().join("python").join("k8s-validate");
    assert!(
        dir.join(".stamp").exists(),
        "{} is missing: run infra/setup.sh",
        dir.display()
    );
    let mut command = Command::new("python3");
    command
        .current_dir(repo_root())
        .env("PYTHONPATH", dir)
        .arg(repo_root().join("infra/k8s/validate.py"));
    command
}

/// Every YAML document of `text` as JSON (PyYAML through validate.py --to-json).
fn yaml_documents(text: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = validator()
        .args(["--to-json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "YAML did not parse");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The merged compose configuration (base + secure override, gpu profile: every service) as JSON.
fn compose() -> Value {
    let text = compose_config(
        &["docker-compose.yml", "docker-compose.secure.yml"],
        Some("gpu"),
        true,
    )
    .unwrap();
    yaml_documents(&text).remove(0)
}

/// The k8s objects with the file each came from (base directory, then gpu/).
fn k8s_objects() -> Vec<(String, Value)> {
    let mut objects = Vec::new();
    for dir in ["infra/k8s", "infra/k8s/gpu"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join(dir))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string();
            for doc in yaml_documents(&std::fs::read_to_string(&file).unwrap()) {
                objects.push((name.clone(), doc));
            }
        }
    }
    assert!(objects.len() > 10, "infra/k8s holds the manifests");
    objects
}

/// One stage of infra/docker/Dockerfile.
#[derive(Debug, Default, Clone)]
struct Stage {
    parent: Option<String>,
    env: BTreeMap<String, String>,
    entrypoint: Option<String>,
    healthcheck: Option<String>,
    expose: Vec<u16>,
}

/// Stages by name, instructions joined across line continuations.
fn dockerfile() -> BTreeMap<String, Stage> {
    let text = std::fs::read_to_string(repo_root().join("infra/docker/Dockerfile")).unwrap();
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.is_empty() {
                    logical.push(std::mem::take(&mut current));
                }
            }
        }
    }
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut name = String::new();
    for instruction in logical {
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((&instruction, ""));
        match keyword {
            "FROM" => {
                let (base, stage) = rest.split_once(" AS ").expect("every stage is named");
                name = stage.trim().to_owned();
                let parent = stages
                    .contains_key(base.trim())
                    .then(|| base.trim().to_owned());
                stages.insert(
                    name.clone(),
                    Stage {
                        parent,
                        ..Stage::default()
                    },
                );
            }
            "ENV" => {
                let stage = stages.get_mut(&name).unwrap();
                for pair in rest.split_whitespace() {
                    let (key, value) = pair.split_once('=').expect("ENV key=value");
                    stage.env.insert(key.to_owned(), value.to_owned());
                }
            }
            "ENTRYPOINT" => {
                let argv: Vec<String> = serde_json::from_str(rest).expect("ENTRYPOINT [json]");
                stages.get_mut(&name).unwrap().entrypoint = Some(argv[0].clone());
            }
            "HEALTHCHECK" => stages.get_mut(&name).unwrap().healthcheck = Some(rest.to_owned()),
            "EXPOSE" => stages
                .get_mut(&name)
                .unwrap()
                .expose
                .extend(rest.split_whitespace().map(|p| p.parse::<u16>().unwrap())),
            _ => {}
        }
    }
    stages
}

/// A stage with what it inherits from its parent stages (ENV, ENTRYPOINT, HEALTHCHECK, EXPOSE).
fn resolved(stages: &BTreeMap<String, Stage>, name: &str) -> Stage {
    let stage = &stages[name];
    let Some(parent) = &stage.parent else {
        return stage.clone();
    };
    let mut merged = resolved(stages, parent);
    merged.env.extend(stage.env.clone());
    merged.entrypoint = stage.entrypoint.clone().or(merged.entrypoint);
    merged.healthcheck = stage.healthcheck.clone().or(merged.healthcheck);
    merged.expose.extend(&stage.expose);
    merged
}

/// Runtime images: the Dockerfile stages with an ENTRYPOINT, target name → binary name.
fn image_targets() -> BTreeMap<String, String> {
    let stages = dockerfile();
    stages
        .keys()
        .filter_map(|name| {
            let entrypoint = resolved(&stages, name).entrypoint?;
            let binary = Path::new(&entrypoint).file_name()?.to_str()?.to_owned();
            Some((name.clone(), binary))
        })
        .collect()
}

/// The Dockerfile target of an image reference `sentiflow-<target>:<tag>` (a `-cuda` tag is the CUDA
/// target), or None for a third-party image.
fn target_of_image(image: &str) -> Option<String> {
    let (repository, tag) = image.split_once(':').unwrap_or((image, ""));
    let target = repository.strip_prefix("sentiflow-")?;
    Some(if tag.ends_with("-cuda") {
        format!("{target}-cuda")
    } else {
        target.to_owned()
    })
}

/// Binaries of the workspace: crate name of every `services/*/src/main.rs`.
fn workspace_binaries() -> BTreeSet<String> {
    let name = regex::Regex::new(r#"(?m)^name = "([a-z-]+)""#).unwrap();
    std::fs::read_dir(repo_root().join("services"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|dir| dir.join("src/main.rs").exists())
        .map(|dir| {
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
            name.captures(&manifest).unwrap()[1].to_owned()
        })
        .collect()
}

fn env_names(command: &clap::Command, into: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(env) = arg.get_env() {
            into.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        env_names(sub, into);
    }
}

/// The environment flags each binary reads (the CLI: any of its subcommands), plus the cache location
/// every binary resolves its assets with.
fn flags_of(binary: &str) -> BTreeSet<String> {
    let command = match binary {
        "sentiflow-ingest" => sentiflow_ingest::IngestConfig::command(),
        "sentiflow-infer" => sentiflow_infer::InferConfig::command(),
        "sentiflow-trainer" => sentiflow_trainer::TrainerConfig::command(),
        "sentiflow-drift" => sentiflow_drift::DriftConfig::command(),
        "sentiflow" => sentiflow::cli::Cli::command(),
        other => panic!("unknown binary {other}: add it to flags_of"),
    };
    let mut names = BTreeSet::from([CACHE_DIR_ENV.to_owned()]);
    env_names(&command, &mut names);
    names
}

fn http_port(addr: &str) -> u16 {
    addr.parse::<std::net::SocketAddr>()
        .unwrap_or_else(|_| panic!("{addr} is host:port"))
        .port()
}

/// (port, path) of an `http://127.0.0.1:<port>/<path>` URL inside a health check command.
fn health_url(text: &str) -> (u16, String) {
    let url = regex::Regex::new(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[a-z]+)").unwrap();
    let c = url
        .captures(text)
        .unwrap_or_else(|| panic!("no health URL in {text}"));
    (c[1].parse().unwrap(), c[2].to_owned())
}

/// The services' own HTTP port: the default of `--http-addr`, the same for every service.
fn default_http_port() -> u16 {
    let ports: BTreeSet<u16> = [
        "sentiflow-ingest",
        "sentiflow-infer",
        "sentiflow-trainer",
        "sentiflow-drift",
    ]
    .iter()
    .map(|binary| {
        let command = match *binary {
            "sentiflow-ingest" => sentiflow_ingest::IngestConfig::command(),
            "sentiflow-infer" => sentiflow_infer::InferConfig::command(),
            "sentiflow-trainer" => sentiflow_trainer::TrainerConfig::command(),
            _ => sentiflow_drift::DriftConfig::command(),
        };
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some("http-addr"))
            .expect("every service has --http-addr");
        http_port(arg.get_default_values()[0].to_str().unwrap())
    })
    .collect();
    assert_eq!(ports.len(), 1, "services differ in their default port");
    ports.into_iter().next().unwrap()
}

/// Compose services that run a sentiflow image, with the binary each runs.
fn compose_sentiflow_services(compose: &Value) -> BTreeMap<String, String> {
    let targets = image_targets();
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(name, service)| {
            let target = target_of_image(service["image"].as_str()?)?;
            if let Some(built) = service["build"]["target"].as_str() {
                assert_eq!(
                    built, target,
                    "{name}: image name and build target disagree"
                );
            }
            let binary = targets
                .get(&target)
                .unwrap_or_else(|| panic!("{name}: no Dockerfile target {target}"));
            Some((name.clone(), binary.clone()))
        })
        .collect()
}

/// Containers of the k8s workloads: (file, kind/name, container JSON, binary).
fn k8s_containers(objects: &[(String, Value)]) -> Vec<(String, String, Value, String)> {
    let targets = image_targets();
    let mut containers = Vec::new();
    for (file, object) in objects {
        let kind = object["kind"].as_str().unwrap();
        let pod = match kind {
            "Deployment" | "Job" => &object["spec"]["template"]["spec"],
            "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        let name = format!("{kind}/{}", object["metadata"]["name"].as_str().unwrap());
        let init_containers = pod["initContainers"].as_array().into_iter().flatten();
        for container in init_containers.chain(pod["containers"].as_array().unwrap()) {
            let image = container["image"].as_str().unwrap();
            let target = target_of_image(image).unwrap_or_else(|| panic!("{name}: {image}"));
            let binary = targets
                .get(&target)
                .unwrap_or_else(|| panic!("{file} {name}: no Dockerfile target {target}"))
                .clone();
            containers.push((file.clone(), name.clone(), container.clone(), binary));
        }
    }
    containers
}

fn config_map(objects: &[(String, Value)], name: &str) -> BTreeMap<String, String> {
    let (_, object) = objects
        .iter()
        .find(|(_, o)| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("ConfigMap {name}"));
    object["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// Applies Prometheus `relabel_configs` (actions `keep` and `replace`, `;`-joined source labels, fully
/// anchored regexes, `$n` replacements) to a target's labels; `None` when a `keep` drops it.
fn relabel(
    rules: &[Value],
    mut labels: BTreeMap<String, String>,
) -> Option<BTreeMap<String, String>> {
    for rule in rules {
        let joined: Vec<&str> = rule["source_labels"]
            .as_array()
            .map(|sources| {
                sources
                    .iter()
                    .map(|source| {
                        labels
                            .get(source.as_str().unwrap())
                            .map_or("", String::as_str)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let value = joined.join(";");
        let pattern = rule["regex"].as_str().unwrap_or("(.*)");
        let regex = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
        let captures = regex.captures(&value);
        match rule["action"].as_str().unwrap_or("replace") {
            "keep" => captures.as_ref()?,
            "replace" => {
                let Some(captures) = captures else { continue };
                let mut replaced = String::new();
                captures.expand(rule["replacement"].as_str().unwrap_or("$1"), &mut replaced);
                labels.insert(rule["target_label"].as_str().unwrap().to_owned(), replaced);
                continue;
            }
            other => panic!("relabel action {other} is not simulated here"),
        };
    }
    Some(labels)
}

/// A label or annotation name as Kubernetes service discovery exposes it (`[^A-Za-z0-9_]` → `_`).
fn sd_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

// ------------------------------------------------------------------------------------------------ tests

#[test]
fn compose_files_parse_with_and_without_the_override_and_gpu_profile() {
    for (files, profile) in [
        (&["docker-compose.yml"][..], None),
        (&["docker-compose.yml"][..], Some("gpu")),
        (
            &["docker-compose.yml", "docker-compose.secure.yml"][..],
            None,
        ),
        (
            &["docker-compose.yml", "docker-compose.secure.yml"][..],
            Some("gpu"),
        ),
    ] {
        if let Err(stderr) = compose_config(files, profile, true) {
            panic!("docker-compose {profile:?} {files:?} config: {stderr}");
        }
    }
    // The secrets are required, not defaulted: without them compose refuses to start anything.
    let refused = compose_config(&["docker-compose.yml"], None, false).unwrap_err();
    assert!(refused.contains("REDIS_PASSWORD"), "{refused}");
    assert_eq!(
        std::fs::read_to_string(repo_root().join(".env"))
            .unwrap()
            .lines()
            .find(|line| line.starts_with("COMPOSE_PROFILES=")),
        Some("COMPOSE_PROFILES=cpu"),
        "plain `docker compose up` runs the CPU profile"
    );
}

#[test]
fn every_service_binary_has_an_image_a_compose_service_and_a_k8s_workload() {
    let binaries = workspace_binaries();
    assert!(binaries.contains("sentiflow-drift") && binaries.contains("sentiflow"));
    let imaged: BTreeSet<String> = image_targets().into_values().collect();
    let compose = compose();
    let composed: BTreeSet<String> = compose_sentiflow_services(&compose).into_values().collect();
    let objects = k8s_objects();
    let deployed: BTreeSet<String> = k8s_containers(&objects)
        .into_iter()
        .map(|(_, _, _, binary)| binary)
        .collect();
    for binary in &binaries {
        assert!(
            imaged.contains(binary),
            "{binary}: no Dockerfile target runs it"
        );
        assert!(
            composed.contains(binary),
            "{binary}: no compose service runs it"
        );
        assert!(
            deployed.contains(binary),
            "{binary}: no k8s workload runs it"
        );
    }

    // GPU: CUDA images of infer and trainer, reserved GPUs in the gpu profile, nvidia.com/gpu in k8s.
    let targets = image_targets();
    for (target, binary) in [
        ("infer-cuda", "sentiflow-infer"),
        ("trainer-cuda", "sentiflow-trainer"),
    ] {
        assert_eq!(targets.get(target).map(String::as_str), Some(binary));
        let service = compose["services"]
            .as_object()
            .unwrap()
            .values()
            .find(|s| s["build"]["target"] == target)
            .unwrap_or_else(|| panic!("a compose service builds {target}"));
        assert_eq!(service["profiles"], serde_json::json!(["gpu"]));
        let device = &service["deploy"]["resources"]["reservations"]["devices"][0];
        assert_eq!(device["driver"], "nvidia");
        assert_eq!(device["capabilities"], serde_json::json!(["gpu"]));
        let (_, deployment) = objects
            .iter()
            .find(|(file, o)| {
                file.starts_with("infra/k8s/gpu/")
                    && o["spec"]["template"]["spec"]["containers"][0]["image"]
                        .as_str()
                        .is_some_and(|image| target_of_image(image).as_deref() == Some(target))
            })
            .unwrap_or_else(|| panic!("a GPU Deployment runs {target}"));
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
            1
        );
        assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
        assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
        // The GPU Deployment replaces the CPU one of the same name (kubectl apply -f infra/k8s/gpu/).
        let name = &deployment["metadata"]["name"];
        assert!(
            objects.iter().any(|(file, o)| !file.contains("/gpu/")
                && o["kind"] == "Deployment"
                && &o["metadata"]["name"] == name),
            "gpu/{name} replaces a base Deployment"
        );
    }
    // CPU and GPU variants of one service never run together in compose.
    assert_eq!(
        compose["services"]["infer"]["profiles"],
        serde_json::json!(["cpu"])
    );
    assert_eq!(
        compose["services"]["trainer"]["profiles"],
        serde_json::json!(["cpu"])
    );
}

#[test]
fn every_sentiflow_variable_is_a_real_flag_of_the_binary_it_configures() {
    let mut checked = 0;
    let mut unknown = Vec::new();
    let mut check = |place: String, binary: &str, names: Vec<String>| {
        let flags = flags_of(binary);
        for name in names.into_iter().filter(|n| n.starts_with("SENTIFLOW_")) {
            checked += 1;
            if !flags.contains(&name) {
                unknown.push(format!("{place} ({binary}): {name}"));
            }
        }
    };

    // Dockerfile ENV of each runtime image (inherited from its base stage too).
    let stages = dockerfile();
    for (target, binary) in image_targets() {
        let env = resolved(&stages, &target).env.into_keys().collect();
        check(format!("Dockerfile target {target}"), &binary, env);
    }

    // compose (base + secure override, every profile).
    let compose = compose();
    for (service, binary) in compose_sentiflow_services(&compose) {
        let env = compose["services"][&service]["environment"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        check(format!("compose service {service}"), &binary, env);
    }

    // k8s: explicit env entries and every key of a ConfigMap loaded with envFrom.
    let objects = k8s_objects();
    for (file, name, container, binary) in k8s_containers(&objects) {
        let mut env: Vec<String> = container["env"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let map = source["configMapRef"]["name"]
                .as_str()
                .expect("envFrom only loads ConfigMaps (Secrets are single secretKeyRefs)");
            env.extend(config_map(&objects, map).into_keys());
        }
        check(format!("{file} {name}"), &binary, env);
    }

    assert!(checked > 100, "only {checked} variables found");
    assert!(
        unknown.is_empty(),
        "variables no binary reads (typo, or a flag that was renamed):\n{}",
        unknown.join("\n")
    );
    // The check itself can fail: a made-up variable is not a flag of any binary.
    assert!(!flags_of("sentiflow").contains("SENTIFLOW_INFER_MAX_BATCHES"));
}

#[tokio::test]
async fn ports_and_health_paths_agree_with_the_services() {
    let port = default_http_port();
    let mut paths = BTreeSet::new();

    // Dockerfile: every runtime image listens, exposes and checks its health on the services' port.
    let stages = dockerfile();
    for (target, binary) in image_targets() {
        let stage = resolved(&stages, &target);
        assert_eq!(
            http_port(&stage.env["SENTIFLOW_HTTP_ADDR"]),
            port,
            "{target}"
        );
        assert_eq!(stage.expose, vec![port], "{target}");
        let healthcheck = stage.healthcheck.as_deref().unwrap();
        if binary == "sentiflow" {
            // The CLI image runs one-shot jobs: no health check to fail while they work.
            assert_eq!(healthcheck, "NONE", "{target}");
            continue;
        }
        let (health_port, path) = health_url(healthcheck);
        assert_eq!(health_port, port, "{target} HEALTHCHECK");
        paths.insert(path);
    }

    // compose: address, health check and published container port of every sentiflow service.
    let compose = compose();
    for (service, _) in compose_sentiflow_services(&compose) {
        let spec = &compose["services"][&service];
        assert_eq!(
            http_port(spec["environment"]["SENTIFLOW_HTTP_ADDR"].as_str().unwrap()),
            port,
            "{service}"
        );
        if spec["restart"] == "no" {
            continue; // one-shot jobs serve nothing
        }
        let test = spec["healthcheck"]["test"].to_string();
        let (health_port, path) = health_url(&test);
        assert_eq!(health_port, port, "{service} healthcheck");
        paths.insert(path);
        for published in spec["ports"].as_array().unwrap() {
            // docker-compose config writes "host_ip:host_port:container_port/proto".
            let mapping = published.as_str().unwrap();
            let container = mapping
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            assert_eq!(container, port.to_string(), "{service} ports {mapping}");
        }
    }

    // Prometheus scrapes every long-running compose sentiflow service by its name on that port.
    let prometheus = yaml_documents(
        &std::fs::read_to_string(repo_root().join("infra/prometheus/prometheus.yml")).unwrap(),
    )
    .remove(0);
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"][0]["targets"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    for service in ["ingest", "infer", "trainer", "drift"] {
        assert!(
            targets.contains(&format!("{service}:{port}")),
            "{service}:{port} scraped"
        );
    }

    // k8s: container port, probes, scrape annotation, Service and ConfigMap address.
    let objects = k8s_objects();
    assert_eq!(
        http_port(&config_map(&objects, "sentiflow-config")["SENTIFLOW_HTTP_ADDR"]),
        port
    );
    for (file, object) in &objects {
        let name = object["metadata"]["name"].as_str().unwrap_or("?");
        match object["kind"].as_str().unwrap() {
            "Deployment" => {
                let pod = &object["spec"]["template"];
                assert_eq!(
                    pod["metadata"]["annotations"]["prometheus.io/port"],
                    port.to_string(),
                    "{file} {name}"
                );
                let container = &pod["spec"]["containers"][0];
                assert_eq!(
                    container["ports"][0]["containerPort"], port,
                    "{file} {name}"
                );
                for (probe, wanted) in
                    [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]
                {
                    let get = &container[probe]["httpGet"];
                    assert_eq!(get["port"], port, "{file} {name} {probe}");
                    assert_eq!(get["path"], wanted, "{file} {name} {probe}");
                    paths.insert(wanted.to_owned());
                }
            }
            "Service" => {
                assert_eq!(
                    object["spec"]["ports"][0]["targetPort"], port,
                    "{file} {name}"
                );
            }
            _ => {}
        }
    }

    // Every path the deployment files probe is a route of the services' HTTP server (200 or 503, never
    // 404); an unknown path is 404, so the check can fail.
    assert_eq!(
        paths,
        BTreeSet::from(["/healthz".to_owned(), "/readyz".to_owned()])
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (addr, _task) = sentiflow_common::telemetry::serve_http(
        "127.0.0.1:0".parse().unwrap(),
        sentiflow_common::health::Health::new("deploy-test"),
        axum::Router::new(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    for path in &paths {
        let (status, _) = sentiflow_tests::http_get(addr, path).await.unwrap();
        assert!(status == 200 || status == 503, "{path}: {status}");
    }
    let (status, _) = sentiflow_tests::http_get(addr, "/health").await.unwrap();
    assert_eq!(status, 404);
    shutdown.cancel();
}

#[test]
fn k8s_secrets_mounts_and_the_api_keys_file_fit_together() {
    let objects = k8s_objects();
    let secrets: BTreeMap<String, &Value> = objects
        .iter()
        .filter(|(_, object)| object["kind"] == "Secret")
        .map(|(_, object)| {
            (
                object["metadata"]["name"].as_str().unwrap().to_owned(),
                &object["stringData"],
            )
        })
        .collect();
    let mut api_key_readers = BTreeSet::new();
    for (file, object) in &objects {
        let Some(pod) = object["spec"]["template"]["spec"]
            .as_object()
            .or_else(|| object["spec"]["jobTemplate"]["spec"]["template"]["spec"].as_object())
        else {
            continue;
        };
        let name = format!("{file} {}", object["metadata"]["name"].as_str().unwrap());
        let volumes: BTreeMap<&str, &Value> = pod
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|volume| (volume["name"].as_str().unwrap(), volume))
            .collect();
        for volume in volumes.values() {
            if let Some(secret) = volume["secret"]["secretName"].as_str() {
                assert!(secrets.contains_key(secret), "{name}: no Secret {secret}");
            }
        }
        let containers = pod
            .get("initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(pod["containers"].as_array().unwrap());
        for container in containers {
            let mounts: Vec<(&str, &str)> = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|mount| {
                    let volume = mount["name"].as_str().unwrap();
                    assert!(volumes.contains_key(volume), "{name}: no volume {volume}");
                    (volume, mount["mountPath"].as_str().unwrap())
                })
                .collect();
            for entry in container["env"].as_array().into_iter().flatten() {
                let reference = &entry["valueFrom"]["secretKeyRef"];
                if let (Some(secret), Some(key)) =
                    (reference["name"].as_str(), reference["key"].as_str())
                {
                    assert!(
                        secrets
                            .get(secret)
                            .is_some_and(|data| data.get(key).is_some()),
                        "{name}: Secret {secret} has no key {key}"
                    );
                }
                if entry["name"] != "SENTIFLOW_API_KEYS_FILE" {
                    continue;
                }
                // The file lies in a mounted secret that holds it, mounted whole (not with subPath,
                // which the kubelet never updates: rotation would need a restart).
                let path = Path::new(entry["value"].as_str().unwrap());
                let (volume, _) = mounts
                    .iter()
                    .find(|(_, at)| Path::new(at) == path.parent().unwrap())
                    .unwrap_or_else(|| panic!("{name}: nothing mounted at {}", path.display()));
                let secret = volumes[volume]["secret"]["secretName"].as_str().unwrap();
                let file_name = path.file_name().unwrap().to_str().unwrap();
                let template = secrets[secret][file_name]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: Secret {secret} has no key {file_name}"));
                assert!(
                    container["volumeMounts"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|mount| mount.get("subPath").is_none()),
                    "{name}"
                );
                // The template's placeholder is refused by the service, so nobody runs with it.
                let dir = tempfile::tempdir().unwrap();
                let keys = dir.path().join(file_name);
                std::fs::write(&keys, template).unwrap();
                let refused = sentiflow_common::api_keys::ApiKeys::load("test", &keys)
                    .expect_err("the template's placeholder is not a usable key");
                assert!(refused.to_string().contains("printable ASCII"), "{refused}");
                api_key_readers.insert(object["metadata"]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        api_key_readers,
        BTreeSet::from(["infer".to_owned(), "ingest".to_owned()]),
        "the services with a request API read the API keys (the GPU infer replaces the CPU one)"
    );
}

#[test]
fn keda_scales_the_real_consumer_groups_within_the_partitions() {
    let objects = k8s_objects();
    let catalogue = Catalogue::embedded();
    let brokers = &config_map(&objects, "sentiflow-config")["SENTIFLOW_KAFKA_BROKERS"];
    let containers = k8s_containers(&objects);
    let mut scaled = BTreeSet::new();
    for (_, object) in objects.iter().filter(|(_, o)| o["kind"] == "ScaledObject") {
        let target = object["spec"]["scaleTargetRef"]["name"].as_str().unwrap();
        let binary = &containers
            .iter()
            .find(|(file, name, _, _)| {
                !file.contains("/gpu/") && name == &format!("Deployment/{target}")
            })
            .unwrap_or_else(|| panic!("ScaledObject targets Deployment {target}"))
            .3;
        let command = match binary.as_str() {
            "sentiflow-ingest" => sentiflow_ingest::IngestConfig::command(),
            "sentiflow-infer" => sentiflow_infer::InferConfig::command(),
            other => panic!("KEDA scales {other}: only ingest and infer may run many replicas"),
        };
        let group = command
            .get_arguments()
            .find(|arg| arg.get_long() == Some("group-id"))
            .unwrap()
            .get_default_values()[0]
            .to_str()
            .unwrap()
            .to_owned();
        let trigger = &object["spec"]["triggers"][0]["metadata"];
        assert_eq!(trigger["consumerGroup"], group.as_str(), "{target}");
        assert_eq!(trigger["bootstrapServers"], brokers.as_str(), "{target}");
        let topic = catalogue
            .topics
            .iter()
            .find(|t| trigger["topic"] == t.name.as_str())
            .unwrap_or_else(|| panic!("{target}: {} is a catalogue topic", trigger["topic"]));
        assert!(
            topic.consumers.iter().any(|c| c == target),
            "{target} consumes {}",
            topic.name
        );
        let max = object["spec"]["maxReplicaCount"].as_i64().unwrap();
        assert!(
            max <= i64::from(topic.partitions),
            "{target}: {max} replicas > {} partitions",
            topic.partitions
        );
        scaled.insert(target.to_owned());
    }
    assert_eq!(
        scaled,
        BTreeSet::from(["infer".to_owned(), "ingest".to_owned()])
    );
}

#[test]
fn k8s_manifests_pass_the_strict_schema_check() {
    let output = validator()
        .args(["infra/k8s", "infra/k8s/gpu"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(", 0 errors"), "{stdout}");
}

#[test]
fn the_schema_check_fails_on_real_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let read = |file: &str| std::fs::read_to_string(repo_root().join(file)).unwrap();
    let cases = [
        // A misspelled field is silently ignored by a lenient apply: the strict schema refuses it.
        (
            "infra/k8s/41-infer.yaml",
            "readinessProbe:",
            "readinesProbe:",
            "'readinesProbe' was unexpected",
        ),
        // A quoted port is a string where the API wants an integer.
        (
            "infra/k8s/40-ingest.yaml",
            "containerPort: 9100",
            "containerPort: \"9100\"",
            "is not of type 'integer'",
        ),
        // KEDA trigger metadata values are strings.
        (
            "infra/k8s/60-keda.yaml",
            "lagThreshold: \"5000\"",
            "lagThreshold: 5000",
            "is not of type 'string'",
        ),
        // A field KEDA does not know.
        (
            "infra/k8s/60-keda.yaml",
            "consumerGroup: sentiflow-infer",
            "consumerGroupName: sentiflow-infer",
            "'consumerGroupName' was unexpected",
        ),
    ];
    for (file, from, to, expected) in cases {
        let original = read(file);
        assert!(original.contains(from), "{file} contains {from}");
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, original.replacen(from, to, 1)).unwrap();
        let output = validator().arg(&broken).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            !output.status.success(),
            "{file} with {to:?} passed:\n{stdout}"
        );
        assert!(stdout.contains(expected), "{file} with {to:?}:\n{stdout}");
    }
}

/// A redis-server listening only on TLS, stopped on drop.
struct TlsRedis(std::process::Child);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn redis_tls_flags_connect_to_a_tls_only_redis() {
    use sentiflow_common::config::RedisArgs;
    use sentiflow_common::store::RedisStore;

    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let generated = Command::new("bash")
        .arg(repo_root().join("infra/tls/gen-certs.sh"))
        .arg(&tls)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "gen-certs.sh: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis_dir = tls.join("redis");
    let _server = TlsRedis(
        Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(redis_dir.join("redis.crt"))
            .arg("--tls-key-file")
            .arg(redis_dir.join("redis.key"))
            .arg("--tls-ca-cert-file")
            .arg(redis_dir.join("ca.crt"))
            .args(["--tls-auth-clients", "no", "--requirepass", "s3cret"])
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (built with TLS, as Debian's is)"),
    );
    let args = |url: &str, ca: Option<&Path>| {
        let mut args = RedisArgs::local(url, "deploy-test");
        args.tls_ca = ca.map(Path::to_path_buf);
        args
    };
    let url = format!("rediss://:s3cret@localhost:{port}/0");
    let ca = tls.join("ca.crt");

    // With the CA of gen-certs.sh: PING answers (retry while redis-server starts).
    let store = RedisStore::connect_lazy(&args(&url, Some(&ca))).unwrap();
    let mut answered = false;
    for _ in 0..100 {
        if store.ping().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answered, "PING over TLS with --redis-tls-ca");
    // Without it the server's certificate (private CA) is refused.
    let untrusted = RedisStore::connect_lazy(&args(&url, None)).unwrap();
    assert!(
        untrusted.ping().await.is_err(),
        "an untrusted certificate is refused"
    );
    // A CA with a plain redis:// URL, or a CA file that is not there, is a configuration error up front.
    let plain = format!("redis://:s3cret@localhost:{port}/0");
    let error = RedisStore::connect_lazy(&args(&plain, Some(&ca))).unwrap_err();
    assert!(error.to_string().contains("rediss://"), "{error}");
    let error =
        RedisStore::connect_lazy(&args(&url, Some(&dir.path().join("missing.crt")))).unwrap_err();
    assert!(error.to_string().contains("missing.crt"), "{error}");
}

// ------------------------------------------------------------- the secure override's broker, for real

/// A process killed (and reaped) on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The broker property an apache/kafka image variable sets (`KAFKA_A_B` → `a.b`, `__` → `_`, `___` → `-`),
/// or None for a variable the image's scripts consume themselves.
fn image_property(name: &str) -> Option<String> {
    let rest = name.strip_prefix("KAFKA_")?;
    if [
        "OPTS",
        "HEAP_OPTS",
        "SSL_KEYSTORE_FILENAME",
        "SSL_KEYSTORE_CREDENTIALS",
        "SSL_KEY_CREDENTIALS",
        "LOG_DIRS",
    ]
    .contains(&rest)
    {
        return None;
    }
    Some(
        rest.to_ascii_lowercase()
            .replace("___", "\u{1}")
            .replace("__", "\u{2}")
            .replace('_', ".")
            .replace('\u{1}', "-")
            .replace('\u{2}', "_"),
    )
}

/// `--long=value` arguments of `command` for the `SENTIFLOW_*` variables of a compose service, so the
/// service's configuration is parsed from exactly what compose would set.
fn args_from_env(command: &clap::Command, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut args = vec![command.get_name().to_owned()];
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if let Some(value) = env.get(var.to_str().unwrap()) {
            args.push(format!("--{long}={value}"));
        }
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_override_broker_accepts_the_services_kafka_flags() {
    use clap::Parser as _;

    let compose_text = compose_config(
        &["docker-compose.yml", "docker-compose.secure.yml"],
        None,
        true,
    )
    .unwrap();
    let compose = yaml_documents(&compose_text).remove(0);
    let broker_env = compose["services"]["kafka"]["environment"]
        .as_object()
        .unwrap()
        .clone();
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    let generated = Command::new("bash")
        .arg(repo_root().join("infra/tls/gen-certs.sh"))
        .arg(&tls)
        .output()
        .unwrap();
    assert!(generated.status.success());

    // The compose ports, moved to free local ones; the `kafka` host is this machine (the certificate
    // names both `kafka` and `localhost`).
    // Each port's listener stays bound until all four are chosen, so no two are the same.
    let held: Vec<std::net::TcpListener> = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: BTreeMap<&str, String> = ["9092", "9093", "29092", "9094"]
        .into_iter()
        .zip(&held)
        .map(|(compose_port, listener)| {
            (
                compose_port,
                listener.local_addr().unwrap().port().to_string(),
            )
        })
        .collect();
    drop(held);
    let address = regex::Regex::new(r"(kafka|localhost|127\.0\.0\.1)?:(\d+)\b").unwrap();
    let relocate = |value: &str| {
        address
            .replace_all(value, |c: &regex::Captures| {
                let host = match c.get(1).map(|m| m.as_str()) {
                    Some("kafka") | Some("localhost") => "localhost",
                    Some(other) => other,
                    None => "",
                };
                let port = ports.get(&c[2]).cloned().unwrap_or_else(|| c[2].to_owned());
                format!("{host}:{port}")
            })
            .into_owned()
    };
    let secret = |file: &str| std::fs::read_to_string(tls.join("kafka").join(file)).unwrap();
    let mut properties = String::new();
    for (name, value) in &broker_env {
        if let Some(property) = image_property(name) {
            let value = value.as_str().map_or(value.to_string(), str::to_owned);
            properties.push_str(&format!("{property}={}\n", relocate(&value)));
        }
    }
    // What the image's configure script derives from KAFKA_SSL_KEYSTORE_FILENAME and the credential files.
    let keystore = broker_env["KAFKA_SSL_KEYSTORE_FILENAME"].as_str().unwrap();
    properties.push_str(&format!(
        "ssl.keystore.location={}\nssl.keystore.password={}\nssl.key.password={}\nlog.dirs={}\n",
        tls.join("kafka").join(keystore).display(),
        secret(
            broker_env["KAFKA_SSL_KEYSTORE_CREDENTIALS"]
                .as_str()
                .unwrap()
        ),
        secret(broker_env["KAFKA_SSL_KEY_CREDENTIALS"].as_str().unwrap()),
        dir.path().join("logs").display(),
    ));
    let properties_path = dir.path().join("server.properties");
    std::fs::write(&properties_path, &properties).unwrap();

    // Format with the SCRAM user (what the kafka-scram job adds through the loopback listener), then run
    // the broker with the override's JAAS file.
    let cache = CacheDir::from_env().unwrap();
    let libs = cache.kafka_libs().join("*");
    let (username, password) = ("sentiflow", "scram-test-password");
    let format = Command::new("java")
        .arg("-cp")
        .arg(&libs)
        .arg("kafka.tools.StorageTool")
        .args([
            "format",
            "-t",
            broker_env["CLUSTER_ID"].as_str().unwrap(),
            "-c",
        ])
        .arg(&properties_path)
        .arg("--add-scram")
        .arg(format!(
            "SCRAM-SHA-512=[name={username},password={password}]"
        ))
        .output()
        .expect("java (infra/setup.sh needs Java 17+)");
    assert!(
        format.status.success(),
        "format with the compose CLUSTER_ID: {}{}",
        String::from_utf8_lossy(&format.stdout),
        String::from_utf8_lossy(&format.stderr)
    );
    let jaas = broker_env["KAFKA_OPTS"].as_str().unwrap().replace(
        "/etc/kafka/jaas/kafka_server_jaas.conf",
        repo_root()
            .join("infra/kafka/kafka_server_jaas.conf")
            .to_str()
            .unwrap(),
    );
    let log = std::fs::File::create(dir.path().join("kafka.log")).unwrap();
    let _broker = Child(
        Command::new("java")
            .args(["-Xmx512m", "-Xms512m", &jaas, "-cp"])
            .arg(&libs)
            .arg("kafka.Kafka")
            .arg(&properties_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // The ingest service's configuration, parsed from the env compose gives it (brokers relocated).
    let ingest_env: BTreeMap<String, String> = compose["services"]["ingest"]["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .map(|(k, v)| match k.as_str() {
            "SENTIFLOW_KAFKA_BROKERS" => (k, relocate(&v)),
            "SENTIFLOW_KAFKA_SASL_PASSWORD" => (k, password.to_owned()),
            "SENTIFLOW_KAFKA_SSL_CA_LOCATION" => (k, tls.join("ca.crt").display().to_string()),
            _ => (k, v),
        })
        .collect();
    let args = args_from_env(&sentiflow_ingest::IngestConfig::command(), &ingest_env);
    let config = sentiflow_ingest::IngestConfig::try_parse_from(&args).unwrap();
    let kafka = config.kafka;
    assert_eq!(kafka.security_protocol.as_deref(), Some("sasl_ssl"));
    assert!(
        !format!("{kafka:?}").contains(password),
        "the password is redacted"
    );

    // Over SASL_SSL + SCRAM: create the catalogue's topics and publish one acknowledged message (the
    // broker takes a while to start: retry the first call).
    let catalogue = Catalogue::embedded();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match sentiflow_common::kafka::ensure_topics(&kafka, catalogue, Some(1)).await {
            Ok(_) => break,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "topics over SASL_SSL: {error}\n{}",
                    std::fs::read_to_string(dir.path().join("kafka.log")).unwrap_or_default()
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    let producer = sentiflow_common::kafka::ResilientProducer::new(&kafka, "deploy-test").unwrap();
    let ack = producer
        .enqueue("reviews.raw", Some(b"k".as_slice()), b"{}".as_slice(), None)
        .await
        .unwrap();
    sentiflow_common::kafka::await_delivery(ack).await.unwrap();

    // A wrong password is refused by the broker: no metadata, while the right one gets it.
    let metadata = |args: &sentiflow_common::config::KafkaArgs| {
        let consumer: rdkafka::consumer::BaseConsumer = args
            .client_config()
            .set("group.id", "deploy-test")
            .create()
            .unwrap();
        rdkafka::consumer::Consumer::fetch_metadata(
            &consumer,
            None,
            std::time::Duration::from_secs(15),
        )
        .map(|m| m.topics().len())
    };
    assert!(metadata(&kafka).unwrap() >= catalogue.topics.len());
    let mut wrong = kafka.clone();
    wrong.sasl_password = Some(sentiflow_common::config::Secret::new("wrong"));
    assert!(
        metadata(&wrong).is_err(),
        "a wrong SCRAM password must be refused"
    );
}

#[test]
fn k8s_arguments_of_the_cli_image_parse_as_sentiflow_commands() {
    use clap::Parser as _;
    let objects = k8s_objects();
    let mut parsed = 0;
    for (file, name, container, binary) in k8s_containers(&objects) {
        let Some(args) = container["args"].as_array() else {
            continue;
        };
        if binary != "sentiflow" {
            continue;
        }
        let args: Vec<&str> = args.iter().map(|arg| arg.as_str().unwrap()).collect();
        // A shell script (`command: [sh, -c]`): every `sentiflow …` it runs, redirections dropped.
        let command_lines: Vec<Vec<&str>> = if container["command"].is_array() {
            args.iter()
                .flat_map(|script| script.split([';', '&', '|']))
                .map(|part| {
                    part.split_whitespace()
                        .take_while(|word| !word.contains('>'))
                        .collect::<Vec<_>>()
                })
                .filter(|words| words.first() == Some(&"sentiflow"))
                .collect()
        } else {
            vec![[&["sentiflow"][..], &args].concat()]
        };
        for command_line in command_lines {
            if let Err(error) = sentiflow::cli::Cli::try_parse_from(&command_line) {
                panic!("{file} {name}: {command_line:?} is not a sentiflow command line: {error}");
            }
            parsed += 1;
        }
    }
    // topics-init, bootstrap-model's three, the two prune steps at least.
    assert!(parsed >= 6, "only {parsed} command lines found");
    // The check itself can fail: a made-up flag is refused.
    assert!(
        sentiflow::cli::Cli::try_parse_from(["sentiflow", "models", "prune", "--keep-all"])
            .is_err()
    );
}

#[test]
fn the_k8s_scrape_config_gives_each_service_its_own_job() {
    // The rules group by job: in Kubernetes each service must be scraped as sentiflow-<service>, as
    // prometheus.yml does for compose. Pod discovery's labels are built from each workload's pod
    // template, and the config's relabelling is applied to them.
    let config = yaml_documents(
        &std::fs::read_to_string(repo_root().join("infra/prometheus/prometheus-k8s.yml")).unwrap(),
    )
    .remove(0);
    assert_eq!(config["rule_files"][0], "rules.yml");
    let job = &config["scrape_configs"][0];
    assert_eq!(job["kubernetes_sd_configs"][0]["role"], "pod");
    let rules = job["relabel_configs"].as_array().unwrap();
    let mut jobs = BTreeMap::new();
    for (file, object) in k8s_objects() {
        if object["kind"] != "Deployment" {
            continue;
        }
        let pod = &object["spec"]["template"]["metadata"];
        let mut labels = BTreeMap::from([
            (
                "job".to_owned(),
                job["job_name"].as_str().unwrap().to_owned(),
            ),
            ("__address__".to_owned(), "10.1.2.3:9100".to_owned()),
            ("__metrics_path__".to_owned(), "/metrics".to_owned()),
            ("__meta_kubernetes_pod_ip".to_owned(), "10.1.2.3".to_owned()),
            (
                "__meta_kubernetes_pod_name".to_owned(),
                "pod-7f9c".to_owned(),
            ),
        ]);
        for (kind, map) in [
            ("label", &pod["labels"]),
            ("annotation", &pod["annotations"]),
        ] {
            for (key, value) in map.as_object().into_iter().flatten() {
                labels.insert(
                    format!("__meta_kubernetes_pod_{kind}_{}", sd_name(key)),
                    value.as_str().unwrap().to_owned(),
                );
            }
        }
        let scraped = relabel(rules, labels);
        let name = object["metadata"]["name"].as_str().unwrap();
        let Some(scraped) = scraped else {
            panic!("{file} {name}: dropped by the scrape config");
        };
        assert_eq!(scraped["__address__"], "10.1.2.3:9100", "{file} {name}");
        assert_eq!(scraped["__metrics_path__"], "/metrics", "{file} {name}");
        assert_eq!(scraped["instance"], "pod-7f9c", "{file} {name}");
        jobs.insert(name.to_owned(), scraped["job"].clone());
    }
    for service in ["ingest", "infer", "trainer", "drift"] {
        assert_eq!(
            jobs.get(service).map(String::as_str),
            Some(format!("sentiflow-{service}").as_str()),
            "{jobs:?}"
        );
    }
    // And the keep rule really filters: a pod of another application is not scraped.
    let other = BTreeMap::from([
        (
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape".to_owned(),
            "true".to_owned(),
        ),
        (
            "__meta_kubernetes_pod_label_app_kubernetes_io_part_of".to_owned(),
            "someone-else".to_owned(),
        ),
    ]);
    assert_eq!(relabel(rules, other), None);
}
