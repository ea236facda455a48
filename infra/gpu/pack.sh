#!/usr/bin/env bash
# Packs what a lent GPU machine needs to prove sentiflow's CUDA paths (release `sentiflow`, the burn
# encoder test, ONNX Runtime's CUDA build, the MiniLM files, ../shared/data) into chunks for device calls.
#
# Usage: infra/gpu/pack.sh [DIR]   (default .device; DIR must be ignored by git, e.g. in .git/info/exclude)
# A device call carries at most 64 MiB, working tree included, so the pack is split into 61.1 MB
# chunks: one call per chunk (back to back: an idle machine goes back after 30 s), the last one runs
# DIR/run.sh (infra/gpu/device_run.sh). Needs `bash infra/setup.sh` once (MiniLM files, lexicon).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$root/.device}" && cd "${1:-$root/.device}" && pwd)
cache=${SENTIFLOW_CACHE_DIR:-$HOME/.cache/sentiflow}
shared=$root/../shared
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cd "$root"

cargo build --release -p sentiflow
test_bin=$(cargo test --release -p sentiflow-burn --test encoder --no-run 2>&1 |
  sed -n 's/.*Executable tests\/encoder.rs (\(.*\))/\1/p' | tail -1)
[ -x "$test_bin" ] || { echo "pack: cannot find the burn encoder test binary" >&2; exit 1; }
for bin in target/release/sentiflow "$test_bin"; do
  name=$(basename "$bin"); name=${name%%-*}
  [ "$name" = encoder ] && name=burn-encoder-test
  strip -o "$stage/$name" "$bin"
  xz -T0 -6 "$stage/$name"
done

bash "$shared/gpu/stage_ort_cuda.sh" "$stage/ort" > /dev/null
xz -T0 -6 -c "$cache/encoder/all-minilm-l6-v2/model.safetensors" > "$stage/model.safetensors.xz"
cp "$cache/encoder/all-minilm-l6-v2/tokenizer.json" "$cache/encoder/all-minilm-l6-v2/config.json" \
  "$cache/lexicon/vader_lexicon.txt" "$stage/"
mkdir -p "$stage/data" "$stage/sys"
cp "$shared"/data/*.gz "$stage/data/"
# The device image may lack the OpenSSL 3 libraries `sentiflow` links; used only when ldd misses them.
cp /lib/x86_64-linux-gnu/libssl.so.3 /lib/x86_64-linux-gnu/libcrypto.so.3 "$stage/sys/"

rm -f "$out"/blob.part.*
tar cf - -C "$stage" . | split -b 61100000 -d -a 1 - "$out/blob.part."
cp "$root/infra/gpu/device_run.sh" "$out/run.sh"
ls -la "$out"
rel=${out#"$root"/}
parts=("$out"/blob.part.*)
echo "Device calls, back to back (carry, then command):"
for ((n = 0; n < ${#parts[@]} - 1; n++)); do
  echo "  [\"$rel/blob.part.$n\"]  mkdir -p /tmp/blob && cp $rel/blob.part.$n /tmp/blob/"
done
echo "  [\"$rel/blob.part.$n\", \"$rel/run.sh\"]  bash $rel/run.sh   (timeout_s ~560)"
