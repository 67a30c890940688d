#!/usr/bin/env bash
# The whole test suite in its own virtual environment (.venv-test), installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
make_venv .venv-test
set +e
# one worker per core, at most 4 (each holds torch and llama.cpp), each taking whole files (module fixtures build once)
workers=$(nproc); [ "$workers" -gt 4 ] && workers=4
.venv-test/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile tests "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "error: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
