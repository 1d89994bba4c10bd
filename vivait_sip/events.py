"""The event names of the log lines an operator greps for (`event=NAME`), in one place.

Every line is `event=NAME key=value ...` (or a JSON object with `"event": NAME` under
`--log-format json`).  The names below are a stable interface, documented in
docs/admin.md ("Event logs"); tests/server/test_events.py checks that the table there
lists exactly these.  `CALL_*` are reserved for the B2BUA: declared now so that alerting
rules can be written before calls exist.

Input-driven events are throttled per name (`event_throttle`, `logs.Throttle`): a flood
of REGISTERs for thousands of distinct AORs writes at most `EVENTS_PER_SECOND` lines a
second per event, the next line written saying how many were suppressed.
"""

from __future__ import annotations

import logging

from .logs import Throttle

EVENTS_PER_SECOND = 50

REGISTRATION_ADDED = "registration_added"
REGISTRATION_REFRESHED = "registration_refreshed"
REGISTRATION_REMOVED = "registration_removed"
REGISTRATION_EXPIRED = "registration_expired"
AUTH_FAILURE = "auth_failure"
AUTH_BAN = "auth_ban"
AUTH_UNBAN = "auth_unban"
CALL_START = "call_start"
CALL_ANSWER = "call_answer"
CALL_END = "call_end"

# name -> (level, fields, meaning): the table of docs/admin.md.
EVENTS: dict[str, tuple[str, str, str]] = {
    REGISTRATION_ADDED: ("info", "aor contact transport source user_agent expires", "a new binding (a phone registered)"),
    REGISTRATION_REFRESHED: ("debug", "aor contact transport source user_agent expires", "an existing binding re-registered"),
    REGISTRATION_REMOVED: (
        "info",
        "aor contact transport source user_agent reason",
        "a binding went: reason=unregistered (Expires 0), replaced (over max_contacts_per_aor), "
        "operator (ctl unregister), flow_failed (its connection closed)",
    ),
    REGISTRATION_EXPIRED: ("info", "aor contact transport source user_agent reason=expired", "a binding was not refreshed in time"),
    AUTH_FAILURE: ("info", "source user user_failures", "wrong credentials (docs/registrar.md, Security)"),
    AUTH_BAN: ("warning", "source failures until", "a source banned after too many failures"),
    AUTH_UNBAN: ("info/warning", "source [by=operator]", "a ban ended, or `ctl unban` lifted it"),
    CALL_START: ("info", "call_id from to source", "reserved (B2BUA): an INVITE was accepted for routing"),
    CALL_ANSWER: ("info", "call_id from to", "reserved (B2BUA): the call was answered"),
    CALL_END: ("info", "call_id reason duration_s", "reserved (B2BUA): the call ended"),
}

event_throttle = Throttle(per_second=EVENTS_PER_SECOND)


def emit(logger: logging.Logger, level: int, name: str, fields: str, *args: object) -> None:
    """`event=NAME` + `fields` (a %-format of the rest), throttled per event name.
    Untrusted values go through `%r` (quoted, escaped)."""
    if logger.isEnabledFor(level):
        event_throttle.log(logger, level, name, "event=" + name + " " + fields, *args)
