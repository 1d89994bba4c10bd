"""Errors raised by the sans-I/O SIP core."""

from __future__ import annotations


class SipParseError(ValueError):
    """A message or value is malformed; `status` is what a server should answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
