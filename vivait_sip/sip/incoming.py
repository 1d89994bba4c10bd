"""A new request as its handler sees it, and the one way to answer it.

Answering only queues the response (the adapter transmits after the handler returns:
"process, then transmit"), so a handler never re-enters the layer that called it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .message import Request
from .peer import Peer


class Responder(Protocol):
    def respond_incoming(
        self, inc: Incoming, status: int, reason: str | None, headers: Iterable[tuple[str, str]], body: bytes
    ) -> None:
        """Answer through the request's transaction, or statelessly when it has none."""
        ...


class Incoming:
    """`request_id` names the request in the UA layer; None: the request is answered
    statelessly (no transaction: challenges, OPTIONS, overload) with `to_tag`."""

    __slots__ = ("peer", "request", "request_id", "responder", "to_tag")

    # An explicit __init__ and slots: mypyc compiles it.
    def __init__(
        self,
        request: Request,
        request_id: int | None,
        peer: Peer,
        responder: Responder,
        to_tag: str = "",
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.peer = peer
        self.responder = responder
        self.to_tag = to_tag

    def respond(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self.responder.respond_incoming(self, status, reason, headers, body)


__all__ = ["Incoming", "Responder"]
