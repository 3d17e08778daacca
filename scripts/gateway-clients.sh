#!/usr/bin/env bash
# Build the agent-framework clients of the gateway conformance tests, each in its own throwaway
# environment (they pin versions that clash with each other and with the test environment), in a
# cache outside the checkout. Re-running reuses what is already built.
#
#   scripts/gateway-clients.sh            # every client
#   scripts/gateway-clients.sh agents     # one client: agents, pydantic-ai, instructor, dspy, vercel-ai
#
# The tests in tests/integration/gateway/test_agent_clients.py use these environments and skip a
# client whose environment is missing, naming this script.
set -euo pipefail

CACHE="${DIFFPO_CLIENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/diffpo-integrations/clients}"
PYTHON="${PYTHON:-python3}"

# client name -> pinned requirements (the versions the table in docs/gateway.md names)
declare -A PY_CLIENTS=(
  [agents]="openai-agents==0.24.0"
  [pydantic-ai]="pydantic-ai-slim[openai]==2.78.0"
  [instructor]="instructor==1.17.0"
  [dspy]="dspy==3.4.1"
)
VERCEL=(ai@7.0.185 @ai-sdk/openai-compatible@3.0.97)

build_python() {
  local name=$1 reqs=${PY_CLIENTS[$1]}
  local dir="$CACHE/$name"
  if [[ -f "$dir/ready" && "$(cat "$dir/ready")" == "$reqs" ]]; then
    echo "$name: ready ($reqs)"
    return
  fi
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  # shellcheck disable=SC2086
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/python" -m pip install --quiet $reqs
  echo "$reqs" > "$dir/ready"
  echo "$name: built ($reqs)"
}

build_node() {
  local dir="$CACHE/vercel-ai"
  if [[ -f "$dir/ready" && "$(cat "$dir/ready")" == "${VERCEL[*]}" ]]; then
    echo "vercel-ai: ready (${VERCEL[*]})"
    return
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && echo '{"private": true, "type": "module"}' > package.json && npm install --silent --no-audit --no-fund "${VERCEL[@]}")
  echo "${VERCEL[*]}" > "$dir/ready"
  echo "vercel-ai: built (${VERCEL[*]})"
}

mkdir -p "$CACHE"
wanted=("$@")
if [[ ${#wanted[@]} -eq 0 ]]; then
  wanted=("${!PY_CLIENTS[@]}" vercel-ai)
fi
for name in "${wanted[@]}"; do
  if [[ $name == vercel-ai ]]; then
    build_node
  elif [[ -n ${PY_CLIENTS[$name]:-} ]]; then
    build_python "$name"
  else
    echo "unknown client $name; the clients are: ${!PY_CLIENTS[*]} vercel-ai" >&2
    exit 2
  fi
done
