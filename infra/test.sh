#!/usr/bin/env bash
# The project's test command (README "Test"): installs prerequisites idempotently, then runs the format
# check, clippy with warnings denied, and every test against a real Kafka broker, Redis and corpus files.
set -euo pipefail
cd "$(dirname "$0")/.."

bash infra/setup.sh --bench # the bench component: fastText and River for the bench harness tests

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
# Integration tests start their own Kafka (one per test binary) and Redis (one per test).
cargo test --workspace --locked --no-fail-fast -- --test-threads="${SENTIFLOW_TEST_THREADS:-4}"
