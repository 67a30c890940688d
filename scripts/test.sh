#!/usr/bin/env bash
# The whole test suite in its own virtual environment (.venv-test), installing what it needs.
# torch is pinned to the CPU wheel on the machines' disk; llama-models (Meta's reference model and tokenizer)
# goes in --no-deps because only its files are needed and its pins would drag other packages down.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv-test/bin/python ] || "$PY" -m venv .venv-test
.venv-test/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv-test/bin/pip install -q --disable-pip-version-check -e '.[test]'
.venv-test/bin/pip install -q --disable-pip-version-check --no-deps llama-models==0.3.0
set +e
.venv-test/bin/python -m pytest -q -p no:cacheprovider tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
