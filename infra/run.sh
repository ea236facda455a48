#!/usr/bin/env bash
# The project's run command (README "Run"): installs prerequisites idempotently, builds the CLI in release
# mode and runs `sentiflow up` (local Kafka + Redis, topics, services, public corpus replay). Extra
# arguments go to `sentiflow up` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."

SENTIFLOW_SETUP_QUIET="${SENTIFLOW_SETUP_QUIET:-1}" bash infra/setup.sh
cargo build --release --locked -p sentiflow -p sentiflow-infer
exec target/release/sentiflow up "$@"
