#!/usr/bin/env bash
# Install vivait-sip into ./.venv (Debian: python3-venv is added with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[speed${EXTRAS:+,$EXTRAS}]"
echo "installed: $(.venv/bin/vivait-sip --version)"
