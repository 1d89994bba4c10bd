#!/usr/bin/env bash
# Install vivait-sip into ./.venv and compile its hot modules with mypyc.
# Debian packages (python3-venv; gcc and python3-dev for the compiled modules) are added
# with apt when missing.  Without a compiler the server still runs, as pure Python.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=""
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv python3-pip"
command -v gcc >/dev/null 2>&1 || need="$need gcc"
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need="$need python3-dev"
if [ -n "$need" ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[speed,native${EXTRAS:+,$EXTRAS}]"
if ! .venv/bin/python scripts/build_native.py > .venv/build_native.log 2>&1; then
    .venv/bin/python scripts/build_native.py --clean >/dev/null 2>&1 || true
    echo "warning: compiling with mypyc failed (see .venv/build_native.log); running as pure Python" >&2
fi
echo "installed: $(.venv/bin/vivait-sip --version) ($(.venv/bin/python -c 'import vivait_sip.native as n; print(n.state)'))"
