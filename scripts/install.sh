#!/usr/bin/env bash
# Install vivait-sip into ./.venv and compile its hot modules with mypyc.
# Debian packages (python3-venv; gcc and python3-dev for the compiled modules; espeak-ng
# and sox for the default spoken prompts) are added with apt when missing.  Without a
# compiler the server still runs, as pure Python.
#
# One line per step (apt, venv, pip, compile, prompts), with its time; a step's own output goes to
# a log that is printed only when the step fails.  Steps with nothing to do are skipped:
# pip when pyproject.toml, the extras and the Python are those of the last install, the
# compilation when the sources and the compiler are those of the last build
# (scripts/native_needed.py).  EXTRAS=test adds extras (scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
START=$SECONDS
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT

# quietly LOG COMMAND...: run it with its output in $LOGS/LOG; on failure print that and stop.
quietly() {
    local log="$LOGS/$1"; shift
    if ! "$@" >"$log" 2>&1; then
        echo "failed" >&2
        echo "error: \`$*\` failed:" >&2
        cat "$log" >&2
        exit 1
    fi
}
took() { echo "$(( SECONDS - $1 )) s"; }

# ---- apt ----
need=""
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv python3-pip"
command -v gcc >/dev/null 2>&1 || need="$need gcc"
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || need="$need python3-dev"
command -v espeak-ng >/dev/null 2>&1 || need="$need espeak-ng"
command -v sox >/dev/null 2>&1 || need="$need sox"
if [ -n "$need" ]; then
    t=$SECONDS
    printf "apt: installing%s ... " "$need"
    quietly apt-update $SUDO apt-get update -qq
    quietly apt-install $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
    echo "done ($(took $t))"
else
    echo "apt: nothing to install (python3-venv, gcc, python3-dev, espeak-ng, sox present)"
fi

# ---- venv ----
if [ -x .venv/bin/python ]; then
    echo "venv: .venv present"
else
    t=$SECONDS
    printf "venv: creating .venv ... "
    quietly venv python3 -m venv .venv
    quietly pip-upgrade .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    echo "done ($(took $t))"
fi

# ---- pip ----
extras="speed,native${EXTRAS:+,$EXTRAS}"
stamp=".venv/install-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) [$extras] $(.venv/bin/python -V 2>&1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import vivait_sip' >/dev/null 2>&1; then
    echo "pip: up to date, skipped (pyproject.toml and extras unchanged)"
else
    t=$SECONDS
    printf "pip: installing vivait-sip [%s] and its dependencies ... " "$extras"
    quietly pip .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
    echo "$want" > "$stamp"
    echo "done ($(took $t))"
fi

# ---- webfon: its SIP library from the npm registry, pinned, integrity checked ----
# sip.js is plain ES modules with no dependencies: the browser loads web/vendor/sip.js/
# as it is (no build step).  Not committed (web/vendor/ is git-ignored).  Offline: an
# earlier fetch (or npm's cache) is enough; else the step fails with a clear error and
# the install goes on without the webfon (the server runs; the page says what is missing).
SIPJS_VERSION="0.21.2"
SIPJS_INTEGRITY="sha512-tSqTcIgrOd2IhP/rd70JablvAp+fSfLSxO4hGNY6LkWRY1SKygTO7OtJEV/BQb8oIxtMRx0LE7nUF2MaqGbFzA=="
vendor="web/vendor/sip.js"
webfon_note=""
if [ -f "$vendor/VENDORED" ] && [ "$(cat "$vendor/VENDORED")" = "sip.js $SIPJS_VERSION $SIPJS_INTEGRITY" ]; then
    echo "webfon: sip.js $SIPJS_VERSION present, skipped"
elif ! command -v npm >/dev/null 2>&1; then
    echo "webfon: error: npm is not installed: cannot fetch sip.js $SIPJS_VERSION (apt-get install npm, then run this again); the webfon will not work" >&2
    webfon_note=" (webfon: sip.js missing)"
else
    t=$SECONDS
    printf "webfon: fetching sip.js %s from the npm registry ... " "$SIPJS_VERSION"
    mkdir -p "$LOGS/sipjs"
    if ! (cd "$LOGS/sipjs" && npm pack --loglevel=error --prefer-offline --fetch-retries=1 --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
            --fetch-timeout=20000 "sip.js@$SIPJS_VERSION") >"$LOGS/npm" 2>&1; then
        echo "failed"
        echo "error: cannot fetch sip.js $SIPJS_VERSION: the npm registry is unreachable (offline?) and npm's cache does not have it; the webfon will not work until ./scripts/install.sh runs again with the registry reachable. npm said:" >&2
        tail -n 3 "$LOGS/npm" >&2
        webfon_note=" (webfon: sip.js missing)"
    else
        tgz="$LOGS/sipjs/sip.js-$SIPJS_VERSION.tgz"
        got="sha512-$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$tgz")"
        if [ "$got" != "$SIPJS_INTEGRITY" ]; then
            echo "failed"
            echo "error: sip.js $SIPJS_VERSION from the npm registry does not match its pinned integrity hash (got $got): not installed" >&2
            exit 1
        fi
        rm -rf "$vendor.new" && mkdir -p "$vendor.new"
        quietly untar tar xzf "$tgz" -C "$vendor.new" --strip-components=1 --exclude='*.d.ts' package/lib package/LICENSE.md
        echo "sip.js $SIPJS_VERSION $SIPJS_INTEGRITY" > "$vendor.new/VENDORED"
        rm -rf "$vendor" && mv "$vendor.new" "$vendor"
        echo "done ($(took $t))"
    fi
fi

# ---- compile ----
if reason=$(.venv/bin/python scripts/native_needed.py 2>&1); then
    echo "compile: $reason, skipped"
else
    t=$SECONDS
    printf "compile: %s; compiling with mypyc (about a minute) ... " "$reason"
    if .venv/bin/python scripts/build_native.py > .venv/build_native.log 2>&1; then
        echo "done ($(took $t))"
    else
        .venv/bin/python scripts/build_native.py --clean >/dev/null 2>&1 || true
        echo "failed ($(took $t))"
        echo "warning: compiling with mypyc failed (see .venv/build_native.log); running as pure Python" >&2
    fi
fi
# ---- prompts ----
if .venv/bin/python scripts/make_prompts.py --check >/dev/null 2>&1; then
    echo "prompts: up to date, skipped"
else
    t=$SECONDS
    printf "prompts: generating the default prompts (tones, espeak-ng speech) ... "
    quietly prompts .venv/bin/python scripts/make_prompts.py
    echo "done ($(took $t))"
fi

state=$(.venv/bin/python -c 'import vivait_sip.native as n; print(n.state)')
echo "installed: $(.venv/bin/vivait-sip --version) ($state) in $(took $START)$webfon_note"
