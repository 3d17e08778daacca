#!/usr/bin/env bash
# Build the real engines (vLLM's CPU build, llama.cpp's server) and the float32 model
# folder once, cached outside git keyed by versions, then run the `engines` test tier.
#
#   ./scripts/engines.sh            build what is missing, then run the whole tier
#   ./scripts/engines.sh build      build only
#   ./scripts/engines.sh smoke      build, then the smoke subset (what CI runs)
#   ./scripts/engines.sh env        build, then print the variables the tier reads
#
# Any failure to build stops the script with the reason; the tier itself fails (never
# skips) when an engine it needs is missing or does not start.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PYTHON="${PYTHON:-python3}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
LLAMA_CPP_VERSION="0.3.36"
CACHE="${DIFFPO_ENGINES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffpo-integrations/engines}"
VLLM_VENV="$CACHE/vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"
LLAMA_VENV="$CACHE/llama-cpp-python-$LLAMA_CPP_VERSION"
WHEELS="$CACHE/wheels"
mkdir -p "$CACHE" "$WHEELS"

log() { echo "engines.sh: $*" >&2; }

build_vllm() {
  if [ -f "$VLLM_VENV/.complete" ]; then return; fi
  log "building the vLLM venv at $VLLM_VENV (about 2 minutes, 3.5 GB)"
  rm -rf "$VLLM_VENV"
  "$PYTHON" -m venv "$VLLM_VENV"
  "$VLLM_VENV/bin/python" -m pip install --quiet --upgrade "pip>=25.1"
  # The CPU torch first, pinned: vllm-cpu requires exactly this one.
  "$VLLM_VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
  # They fail to load beside the CPU torch (`torchvision::nms does not exist`) and a
  # text model does not need them.
  "$VLLM_VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  "$VLLM_VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
  touch "$VLLM_VENV/.complete"
}

build_llama_cpp() {
  if [ -f "$LLAMA_VENV/.complete" ]; then return; fi
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
    log "compiling llama-cpp-python $LLAMA_CPP_VERSION once (about 6 minutes on 2 cores)"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
      "$PYTHON" -m pip wheel --quiet --no-deps -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  rm -rf "$LLAMA_VENV"
  "$PYTHON" -m venv "$LLAMA_VENV"
  "$LLAMA_VENV/bin/python" -m pip install --quiet --upgrade "pip>=25.1"
  "$LLAMA_VENV/bin/python" -m pip install --quiet --find-links "$WHEELS" \
    "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
  "$LLAMA_VENV/bin/python" -c "import llama_cpp.server" >/dev/null
  touch "$LLAMA_VENV/.complete"
}

# The project's Python: $PROJECT_PYTHON, else ./.venv (scripts/setup.sh), else an active venv's.
project_python() {
  if [ -n "${PROJECT_PYTHON:-}" ]; then echo "$PROJECT_PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
  else command -v python; fi
}

# The folder `diffpo serve` itself loads by default (the packaged SmolLM2 GGUF dequantised to
# float32), so vLLM and the in-process reference read the very same weights.
model_dir() {
  "$(project_python)" - <<'PY'
from diffpo_integrations.engine.loading import gguf_cache_folder, load_model, smollm2_gguf_path

load_model()  # converts once; a no-op when the cached folder exists
print(gguf_cache_folder(smollm2_gguf_path()))
PY
}

build_all() {
  MODEL_DIR="$(model_dir | tail -n 1)"
  [ -f "$MODEL_DIR/config.json" ] || { log "no model folder at '$MODEL_DIR'"; exit 1; }
  # The compile is CPU-bound and the vLLM install mostly download and unpacking: side by side.
  build_llama_cpp > "$CACHE/llama-cpp-build.log" 2>&1 &
  local llama_pid=$!
  build_vllm
  if ! wait "$llama_pid"; then
    log "building llama-cpp-python failed; its log ($CACHE/llama-cpp-build.log) ends:"
    tail -n 30 "$CACHE/llama-cpp-build.log" >&2
    exit 1
  fi
}

export_env() {
  export DIFFPO_VLLM_PYTHON="$VLLM_VENV/bin/python"
  export DIFFPO_LLAMA_CPP_PYTHON="$LLAMA_VENV/bin/python"
  export DIFFPO_ENGINES_MODEL_DIR="$MODEL_DIR"
  DIFFPO_SMOLLM2_GGUF="$("$(project_python)" -c 'from diffpo_integrations.engine.loading import smollm2_gguf_path; print(smollm2_gguf_path())')"
  export DIFFPO_SMOLLM2_GGUF
}

mode="${1:-all}"
[ $# -gt 0 ] && shift
case "$mode" in
  build) build_all ;;
  env)
    build_all
    export_env
    echo "DIFFPO_VLLM_PYTHON=$DIFFPO_VLLM_PYTHON"
    echo "DIFFPO_LLAMA_CPP_PYTHON=$DIFFPO_LLAMA_CPP_PYTHON"
    echo "DIFFPO_ENGINES_MODEL_DIR=$DIFFPO_ENGINES_MODEL_DIR"
    echo "DIFFPO_SMOLLM2_GGUF=$DIFFPO_SMOLLM2_GGUF"
    ;;
  all | smoke)
    build_all
    export_env
    py="$(project_python)"
    if [ "$mode" = smoke ]; then
      "$py" -m pytest -m "engines and smoke" tests/engines "$@"
    else
      "$py" -m pytest -m engines tests/engines "$@"
    fi
    ;;
  *) log "unknown mode '$mode': use build, env, smoke or nothing (the whole tier)"; exit 2 ;;
esac
