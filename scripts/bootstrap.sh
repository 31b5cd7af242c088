#!/usr/bin/env bash
# Set up a fresh machine for edgectl development: system packages, a venv in .venv, and the
# package with every extra. Safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# System packages: Python's venv, and Mosquitto (the agent and fleet tests start their own
# broker on a random port; the packaged service is not used).
need=()
"$PY" -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv python3-dev)
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned to the CPU build: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all,dev]"
echo "bootstrap: ready (.venv/bin/edgectl)"
