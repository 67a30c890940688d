#!/usr/bin/env bash
# The whole test suite in its own virtual environment (.venv-test), installing what it needs.
# torch is pinned to the CPU wheel on the machines' disk; llama-models (Meta's reference model and tokenizer)
# and mistral-common (a real Llama-2-style SentencePiece tokenizer.model) go in --no-deps: only their files are
# needed, and their pins would drag other packages down.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-test/bin/python ] || "$PY" -m venv .venv-test
.venv-test/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv-test/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv-test/bin/pip install -q --disable-pip-version-check --no-deps llama-models==0.3.0 mistral-common==1.13.1
set +e
.venv-test/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
