"""The process's file-descriptor limit: raised to the hard limit at start, and the share
of it that accepted connections may use (the rest is kept for the admin API, the store,
worker links, outgoing connections and logs)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("vivait_sip.transport")

try:
    import resource
except ImportError:  # not POSIX
    resource = None  # type: ignore[assignment]

# RLIM_INFINITY cannot be a soft limit on Linux (it is capped by fs.nr_open).
FALLBACK_CEILING = 1 << 20


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return FALLBACK_CEILING


def raise_nofile_limit() -> int:
    """Soft RLIMIT_NOFILE := hard limit (systemd's LimitNOFILE sets both); returns the
    soft limit now in force (0 when unknown)."""
    if resource is None:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("event=file_limit_raised from=%d to=%d", soft, target)
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("event=file_limit_not_raised soft=%d hard=%d error=%r", soft, hard, str(exc))
    return int(min(soft, FALLBACK_CEILING)) if soft != resource.RLIM_INFINITY else FALLBACK_CEILING


def open_fds() -> int:
    """Descriptors open now (/proc/self/fd; 0 when it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def accept_budget(limit: int, reserved: int) -> int | None:
    """How many accepted connections (SIP TCP/TLS, HTTP(S), WebSocket) may be open at once:
    the limit minus what is open now minus `reserved`.  None: no limit known."""
    if limit <= 0:
        return None
    in_use = open_fds()
    budget = max(limit - in_use - reserved, 16)
    if budget < 1000:
        log.warning("event=file_limit_low limit=%d open=%d reserved=%d connections=%d hint=raise_LimitNOFILE", limit, in_use, reserved, budget)
    else:
        log.info("event=connection_budget limit=%d open=%d reserved=%d connections=%d", limit, in_use, reserved, budget)
    return budget
