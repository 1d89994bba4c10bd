#!/usr/bin/env bash
# Install everything the tests need (Debian packages included) and run the whole suite:
# lint, type check, then pytest. A skipped test fails the run (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
# Real peers: SIPp (sip-tester), baresip + sox (softphone, audio), socat (TLS bridge for SIPp,
# which Debian builds without OpenSSL); sngrep (HEP collector, pcap reader) and tshark for the
# SIP trace, promtool (prometheus) to check /metrics; rtpengine-daemon (the media backend's
# real peer: userspace forwarding, run by the tests in the foreground, no kernel module);
# chromium runs the webfon headless (tests/webrtc, through Playwright: never its own browser
# download) inside `unshare -n` (util-linux), npm fetches the webfon's sip.js (install.sh).
PACKAGES="sip-tester baresip sox socat python3-venv sngrep tshark prometheus rtpengine-daemon chromium util-linux"
missing=""
for pkg in $PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
command -v npm >/dev/null 2>&1 || missing="$missing npm"  # any npm will do (Node's own, or Debian's)
if [ -n "$missing" ]; then
    printf "apt (test peers): installing%s ... " "$missing"
    log=$(mktemp)
    if ! { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >"$log" 2>&1; then
        echo "failed" >&2; cat "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    echo "done"
else
    echo "apt (test peers): nothing to install"
fi
EXTRAS=test ./scripts/install.sh
.venv/bin/ruff check vivait_sip tests bench scripts
.venv/bin/mypy
# The whole suite runs on the compiled modules (what install.sh builds and the benchmarks
# measure; tests/server/test_native.py fails if they are not in use).  Then the SIP core,
# the registrar's unit tests, the leak test and the native checks run again as pure
# Python (VIVAIT_SIP_PURE=1), the mode every compiled module must also work in; the
# server tests already start pure servers where it matters (test_invite_flood.py).
# The whole suite passes pure too: VIVAIT_SIP_PURE=1 .venv/bin/python -m pytest -q
# Test files run in parallel (pytest-xdist, one file per worker at a time: a file's tests
# share its servers and port ranges): most of the suite waits on real peers and timers,
# not on the CPU.  VIVAIT_TEST_JOBS=1 runs it serially.
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${VIVAIT_TEST_JOBS:-3}" --dist loadfile --durations=20 "$@"
if [ $# -eq 0 ]; then
    VIVAIT_SIP_PURE=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
        tests/sip \
        tests/registrar/test_digest.py tests/registrar/test_register.py tests/registrar/test_location.py \
        tests/registrar/test_users.py tests/registrar/test_store.py tests/registrar/test_nonce_source.py \
        tests/registrar/test_no_leaks.py tests/server/test_native.py
fi
