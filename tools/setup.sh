#!/usr/bin/env bash
# Sets up a virtualenv (.venv) with edgecompress and its dependencies, and the Fashion-MNIST
# Debian package. torch is installed first and pinned by constraints.txt everywhere, because
# an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -d /usr/share/fonts/truetype/dejavu ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist fonts-dejavu-core) >/dev/null
  else
    echo "note: install the Debian packages dataset-fashion-mnist (the default data set) and fonts-dejavu-core (tests) as root" >&2
  fi
fi
# openssh-server: the tests of `bench --remote` / `export --bench-on` start their own sshd on 127.0.0.1
if [ ! -x /usr/sbin/sshd ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq openssh-server openssh-client) >/dev/null
  else
    echo "note: install the Debian package openssh-server (as root) for the tests of bench --remote" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -c constraints.txt -e ".[compress,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# Two digit classifiers whose trained weights ship inside their PyPI wheels, for
# tests/test_pypi_pretrained.py. --no-deps: they declare torchvision, which the tests never import
# (and whose PyPI build pulls CUDA); the tests load only their nn.Module code and state_dicts.
.venv/bin/python -m pip install -q --no-deps -c constraints.txt ccexam digit-recognizer-py 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, onnxruntime, torch_pruning; print('edgecompress env ready: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
