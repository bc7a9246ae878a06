#!/usr/bin/env bash
# Installs the peers into their own virtual environments under benchmarks/.peers/
# (gitignored), at pinned versions from PyPI, plus the tools venv (matplotlib for
# the chart, py-spy for profiles). Idempotent; rerun after a Python upgrade.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$(.venv/bin/python -c 'import sys; print(sys._base_executable)')}
PEERS=benchmarks/.peers
mkdir -p "$PEERS"
[ -f "$PEERS/.gitignore" ] || printf "# Peer venvs installed by benchmarks/nexmark/setup_peers.sh: never committed.\n*\n" > "$PEERS/.gitignore"
install() {  # name, packages...
    local name=$1; shift
    [ -x "$PEERS/$name/bin/python" ] || "$PY" -m venv "$PEERS/$name"
    "$PEERS/$name/bin/pip" install -q --disable-pip-version-check "$@"
    echo "$name: $("$PEERS/$name/bin/pip" freeze --disable-pip-version-check | grep -iE "^($(IFS='|'; echo "${*%%[=<>\[]*}" | tr ' ' '|' | sed 's/\[[a-z]*\]//g'))==" | tr '\n' ' ')"
}
install quix quixstreams==3.28.1
install faust faust-streaming==0.15.3 orjson==3.13.0     # Faust's JSON codec uses orjson when present
install bytewax "bytewax[kafka]==0.21.1" orjson==3.13.0
install tools matplotlib==3.11.2 py-spy==0.4.3
