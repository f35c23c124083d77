#!/usr/bin/env bash
# Set up, then run the main job on the embedded default (the reference models on Fashion-MNIST).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/vitcompress demo "$@"
