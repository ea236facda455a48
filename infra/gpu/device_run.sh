#!/usr/bin/env bash
# Device side of infra/gpu/pack.sh: unpacks the carried chunks, then runs the burn CUDA tests and the
# encoder benches on the GPU (CUDA EP serving, burn fine-tune of all-MiniLM-L6-v2 on all the data).
#
# Runs under the device tool (writes $OUT/log.txt and the benches' JSON there). Knobs: TRAIN_BATCH (128),
# TRAIN_EPOCHS (3), TRAIN_TIMEOUT seconds (300), TRAIN_ARGS (more `bench train` flags, e.g.
# "--max-length 128 --encoder-learning-rate 1e-4"), ONLY_TRAIN=1 (skip the CUDA tests and the infer
# benches on a repeat run).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/blob /tmp/p
exec > >(tee "$OUT/log.txt") 2>&1
t0=$(date +%s)
stamp() { echo "=== [$(($(date +%s) - t0)) s] $*"; }
cp "$here"/blob.part.* /tmp/blob/
cat /tmp/blob/blob.part.* | tar x -C /tmp/p || { echo "unpack failed: chunks missing?"; ls -la /tmp/blob; exit 1; }
stamp unpacked
bash /tmp/p/ort/assemble_ort_cuda.sh /tmp/p/ort || exit 1
. /tmp/p/ort/device_env.sh
cache=/tmp/sentiflow-cache
minilm=$cache/encoder/all-minilm-l6-v2
mkdir -p "$cache/onnxruntime" "$minilm" "$cache/lexicon"
ln -sfn /tmp/ort "$cache/onnxruntime/1.31.1"
xz -T0 -dc /tmp/p/model.safetensors.xz > "$minilm/model.safetensors"
cp /tmp/p/tokenizer.json /tmp/p/config.json "$minilm/"
cp /tmp/p/vader_lexicon.txt "$cache/lexicon/"
export SENTIFLOW_CACHE_DIR=$cache
for bin in sentiflow burn-encoder-test; do
  xz -T0 -dc "/tmp/p/$bin.xz" > "/tmp/$bin" && chmod +x "/tmp/$bin"
done
ldd /tmp/sentiflow | grep -q "not found" && export LD_LIBRARY_PATH=/tmp/p/sys:$LD_LIBRARY_PATH
export SENTIFLOW_SHARED_DATA=/tmp/p/data   # the burn test's data (its default is ../shared/data)
export RUST_LOG=${RUST_LOG:-info,cubecl=warn,burn=warn} RUST_BACKTRACE=1
data=/tmp/p/data
stamp ready
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

if [ -z "${ONLY_TRAIN:-}" ]; then
  stamp "burn CUDA tests (encoder forward parity, fine-tune smoke; hashed training + ORT parity)"
  timeout 180 /tmp/burn-encoder-test cuda --nocapture --test-threads 1
  stamp "burn CUDA tests rc=$?"

  for batch in 256 1024; do
    # The HTTP path (one-text requests: one run each vs merged) once, with the batch of 256.
    http="--http-clients 64 --http-requests 6000"
    [ "$batch" = 256 ] || http="--http-clients 0"
    stamp "bench infer --family encoder --device cuda --batch $batch $http"
    # $http is split into flags on purpose.
    # shellcheck disable=SC2086
    timeout 150 /tmp/sentiflow bench infer --family encoder --device cuda --rows 50000 --batch "$batch" --precision both \
      $http --data-dir "$data" --json > "$OUT/infer$batch.json"
    stamp "rc=$?"
    cat "$OUT/infer$batch.json"
  done
fi

stamp "bench train --family encoder --device cuda: all rows, ${TRAIN_EPOCHS:-3} epochs, batch ${TRAIN_BATCH:-128}"
# TRAIN_ARGS is split into flags on purpose.
# shellcheck disable=SC2086
timeout "${TRAIN_TIMEOUT:-300}" /tmp/sentiflow bench train --family encoder --device cuda \
  --encoder-train-rows 60000 --encoder-epochs "${TRAIN_EPOCHS:-3}" --encoder-batch-size "${TRAIN_BATCH:-128}" \
  --encoder-eval-rows 3000 --data-dir "$data" ${TRAIN_ARGS:-} --json > "$OUT/train.json"
stamp "rc=$?"
cat "$OUT/train.json"
nvidia-smi --query-gpu=name,memory.used --format=csv
stamp done
