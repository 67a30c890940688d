# Sourced by test.sh and demo.sh. torch is pinned to the CPU wheel on the machines' disk and installed first, so
# nothing after it pulls a CUDA build. llama-models (Meta's reference model and tokenizers) and mistral-common (a
# real Llama-2-style SentencePiece tokenizer.model) go in --no-deps: only their files are needed, and their pins
# would drag other packages down. llama-cpp-python builds llama.cpp from source the first time (about 8 minutes on
# 2 cores; pip caches the wheel).
TORCH=torch==2.13.0
LLAMA_MODELS=llama-models==0.3.0
MISTRAL_COMMON=mistral-common==1.13.1

# venv_pip VENV: create virtual environment VENV (if absent) with torch; PIP is then its quiet pip install.
venv_pip() {
    local venv=$1 py=${PYTHON:-python3.11}
    command -v "$py" >/dev/null || py=python3
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    PIP=("$venv/bin/pip" install -q --disable-pip-version-check)
    "${PIP[@]}" "$TORCH"
}

# make_venv VENV: weightsmith with everything the tests need (its test extras and the --no-deps packages).
make_venv() {
    venv_pip "$1"
    "${PIP[@]}" -e '.[test]'
    "${PIP[@]}" --no-deps "$LLAMA_MODELS" "$MISTRAL_COMMON"
}
