"""A test feature that originates requests through the feature contract: a minimal
back-to-back forwarder.  An INVITE that reaches the server is re-originated to the
address in $FORWARD_TO (`transport:host:port`) as a new call (its own Call-ID, minted to
hash to this worker, tags and CSeq); responses, CANCEL and BYE are relayed between the
two legs.  It exists to prove the user-agent layer and the adapter against real peers
(tests/ua/test_sipp_forwarding.py); the real B2BUA is `vivait_sip/b2bua`.

Loaded with VIVAIT_SIP_FEATURES=forwarder:Forwarder and tests/ua on PYTHONPATH.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from vivait_sip.contract import Feature, RequestHandler, StatelessCheck, mint_call_id
from vivait_sip.sip.address import Listener
from vivait_sip.sip.incoming import Incoming
from vivait_sip.sip.message import Request
from vivait_sip.sip.peer import Peer
from vivait_sip.sip.ua import (
    DialogEnded,
    RequestCancelled,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    UaEvent,
)


@dataclass
class Call:
    inbound: int  # request id of the INVITE we answer
    outbound: int  # request id of the INVITE we sent
    caller: Peer  # where the inbound INVITE came from
    in_dialog: int | None = None
    out_dialog: int | None = None


def _never(req: Request, peer: Peer) -> bool:
    return False


class Forwarder(Feature[BaseModel]):
    name = "forwarder"

    def __init__(self, host: Any) -> None:
        super().__init__(host)
        target = Listener.parse(os.environ["FORWARD_TO"])
        self.target = Peer(target.transport, target.host, target.port)
        self.by_out: dict[int, Call] = {}
        self.by_in: dict[int, Call] = {}
        self.by_dialog: dict[int, tuple[Call, bool]] = {}  # dialog → (call, is the inbound leg)

    def request_handlers(self) -> Mapping[str, RequestHandler]:
        return {"INVITE": self.on_invite}

    def stateless_checks(self) -> Mapping[str, StatelessCheck]:
        return {"INVITE": _never}

    def on_invite(self, inc: Incoming) -> None:
        req = inc.request
        assert inc.request_id is not None
        if req.to.tag is not None:
            inc.respond(481)
            return
        user = req.uri.user or "uas"
        sip = self.host.sip
        headers = [("Content-Type", req.headers.get("content-type") or "application/sdp")] if req.body else []
        local_host, _ = sip.local_address(self.target)
        outbound = sip.send_request(
            "INVITE",
            f"sip:{user}@{self.target.host}:{self.target.port}",
            owner=self.name,
            destinations=[self.target],
            from_=f"<sip:{req.from_.uri.user or 'anonymous'}@{local_host}>",
            call_id=mint_call_id(self.host.worker_index, self.host.worker_count),
            headers=[*headers, ("Contact", sip.contact_for(self.target, "forwarder"))],
            body=req.body,
        )
        call = Call(inc.request_id, outbound, inc.peer)
        self.by_out[outbound] = call
        self.by_in[inc.request_id] = call

    def on_ua_event(self, event: UaEvent) -> None:
        sip = self.host.sip
        if isinstance(event, ResponseReceived):
            call = self.by_out.get(event.request_id)
            if call is None:
                return
            resp = event.response
            headers = [("Content-Type", resp.headers.get("content-type") or "application/sdp")] if resp.body else []
            if resp.status >= 200:
                self.by_out.pop(event.request_id, None)
                self.by_in.pop(call.inbound, None)
            if 200 <= resp.status < 300 and event.dialog_id is not None:
                call.out_dialog = event.dialog_id
                contact = sip.contact_for(call.caller, "forwarder")
                call.in_dialog = sip.respond(call.inbound, resp.status, headers=[*headers, ("Contact", contact)], body=resp.body)
                if call.in_dialog is not None:
                    self.by_dialog[call.in_dialog] = (call, True)
                self.by_dialog[call.out_dialog] = (call, False)
            else:
                contact = [("Contact", sip.contact_for(call.caller, "forwarder"))] if resp.status < 300 else []
                sip.respond(call.inbound, resp.status, resp.reason, headers=[*headers, *contact], body=resp.body)
        elif isinstance(event, RequestFailed):
            call = self.by_out.pop(event.request_id, None)
            if call is not None:
                self.by_in.pop(call.inbound, None)
                sip.respond(call.inbound, event.status, event.reason)
        elif isinstance(event, RequestCancelled):
            call = self.by_in.get(event.request_id)
            if call is not None:
                sip.cancel(call.outbound)
        elif isinstance(event, RequestReceived) and event.dialog_id is not None:
            sip.respond(event.request_id, 200)
        elif isinstance(event, DialogEnded):
            found = self.by_dialog.pop(event.dialog_id, None)
            if found is None:
                return
            call, inbound = found
            other = call.out_dialog if inbound else call.in_dialog
            if other is not None and self.by_dialog.pop(other, None) is not None:
                sip.bye(other)
