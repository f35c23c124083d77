#!/usr/bin/env bash
# Idempotent set-up: virtualenv in .venv, vitcompress installed editable with its dev and onnx extras,
# and Debian's Fashion-MNIST package. Re-running is quick: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.vitcompress-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import vitcompress" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch and torchvision pinned to the builds this machine class ships (see README, "Set-up")
  .venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install -q -e ".[dev,onnx,hf,detection]"
  echo "$want" > "$stamp"
fi

FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/t10k-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = "0" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "setup: Fashion-MNIST is missing: run 'sudo apt-get install -y dataset-fashion-mnist'," \
         "or pass --data-root DIR (a folder with the four idx files) to vitcompress" >&2
  fi
fi
