# Sourced by test.sh and demo.sh: create virtual environment $1 (if absent) with weightsmith and its oracles.
# torch is pinned to the CPU wheel on the machines' disk; llama-models (Meta's reference model and tokenizers) and
# mistral-common (a real Llama-2-style SentencePiece tokenizer.model) go in --no-deps: only their files are
# needed, and their pins would drag other packages down. llama-cpp-python builds llama.cpp from source the first
# time (about 8 minutes on 2 cores; pip caches the wheel).
make_venv() {
    local venv=$1 py=${PYTHON:-python3.11}
    command -v "$py" >/dev/null || py=python3
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    local pip=("$venv/bin/pip" install -q --disable-pip-version-check)
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" -e '.[test]'
    "${pip[@]}" --no-deps llama-models==0.3.0 mistral-common==1.13.1
}
