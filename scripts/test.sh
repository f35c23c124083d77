#!/usr/bin/env bash
# Set up, then run the default test suite (slow tests excluded; `bash scripts/test.sh -m slow` runs them).
# pytest exits 5 when no test ran, so an empty run fails here too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
