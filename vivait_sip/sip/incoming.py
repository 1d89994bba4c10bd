"""A new request as its handler sees it, and the one way to answer it.

Answering only queues the response (the adapter transmits after the handler returns:
"process, then transmit"), so a handler never re-enters the layer that called it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .message import Request, Response, make_response, new_tag
from .peer import Peer


class Responder(Protocol):
    def send_response(self, inc: Incoming, resp: Response) -> None:
        """Queue `resp` through the request's transaction, or statelessly when it has none."""
        ...


class Incoming:
    """`request_id` names the server transaction in the UA layer; None: the request is
    answered statelessly (no transaction: challenges, OPTIONS, overload)."""

    __slots__ = ("peer", "request", "request_id", "responder", "to_tag")

    # An explicit __init__ and slots: mypyc compiles it.
    def __init__(
        self,
        request: Request,
        request_id: int | None,
        peer: Peer,
        responder: Responder,
        to_tag: str | None = None,
    ) -> None:
        self.request = request
        self.request_id = request_id
        self.peer = peer
        self.responder = responder
        self.to_tag = new_tag() if to_tag is None else to_tag

    def respond(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        resp = make_response(self.request, status, reason, to_tag=self.to_tag, headers=headers, body=body)
        self.responder.send_response(self, resp)
        return resp


__all__ = ["Incoming", "Responder"]
