"""The media feature without a server: its config section (and the dialplan's `media`
flag), when the backend starts, the start error for the built-in backend that is not
there yet, the policy's inputs from the config, status merged over workers, metrics and
`ctl media`'s text."""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace
from typing import Any

import pytest
from harness import free_port
from ng_fake import FakeDaemon
from pydantic import ValidationError

from vivait_sip.config import check_document, config_model
from vivait_sip.contract import StartError
from vivait_sip.media.cli import render
from vivait_sip.media.control import Ice, Latching, MediaError, Replace
from vivait_sip.media.feature import MediaFeature, load_builtin_factory, merge_media
from vivait_sip.media.ng import RtpengineBackend
from vivait_sip.media.protocol import MediaDtmf


def make_config(data: dict[str, Any]) -> Any:
    return config_model().model_validate(data)


class FakeHost:
    def __init__(self, data: dict[str, Any]) -> None:
        self.config = make_config(data)
        self.worker_index = 0
        self.calls: dict[str, Any] = {}
        self.others: list[dict[str, object]] = []
        self.sent: list[tuple[int, Any]] = []

    def on_call(self, name: str, handler: Any) -> None:
        self.calls[name] = handler

    async def call_workers(self, name: str, **args: Any) -> list[Any]:
        return self.others

    def owner_of(self, key: str) -> int:
        return len(key) % 2  # two workers, whatever the hash

    def send_to_worker(self, worker: int, msg: Any) -> None:
        self.sent.append((worker, msg))


def call(rule: str | None = None, user: str | None = None, callee_user: str | None = None) -> Any:
    return SimpleNamespace(call_uuid="u1", rule=rule, user=user, callee_user=callee_user, extra={})


def test_defaults_anchor_nothing_and_rewrite_like_kamailio() -> None:
    media = make_config({}).media
    assert media.backend == "builtin" and media.default == "pass" and media.anchor_users == []
    flags = media.flags.to_flags()
    assert flags.ice is Ice.REMOVE and flags.replace == (Replace.ORIGIN, Replace.SESSION_CONNECTION)
    assert flags.latching is Latching.SYMMETRIC
    assert media.rtpengine.timeout_s == 2.0 and media.rtpengine.down_after == 2


def test_config_errors_name_their_path() -> None:
    _, lines = check_document({
        "media": {"backend": "rtpengine", "rtpengine": {"daemons": []}},
        "b2bua": {"dialplan": [{"name": "r", "media": "anchr", "action": {"type": "user"}}]},
    })
    assert any(line.startswith("media: ") and "backend rtpengine needs rtpengine.daemons" in line for line in lines), lines
    assert any(line.startswith("b2bua.dialplan[0].media: ") for line in lines), lines
    _, lines = check_document({"media": {"rtpengine": {"daemons": ["10.0.0.7", "10.0.0.8:2223", "10.0.0.8:2223"]},
                                         "flags": {"ice": "maybe", "media_address": "nowhere", "colour": 1}}})
    joined = "\n".join(lines)
    assert "media.rtpengine.daemons" in joined and "expected HOST:PORT" in joined
    _, lines = check_document({"media": {"rtpengine": {"daemons": ["127.0.0.1:2223"], "dtmf_listen": "nope"}}})
    assert lines == ["media.rtpengine.dtmf_listen: 'nope': expected HOST:PORT"], lines
    assert "media.flags.ice" in joined and "media.flags.media_address" in joined and "media.flags.colour: unknown key" in joined
    with pytest.raises(ValidationError):
        make_config({"media": {"flags": {"codec": {"strip": ["PC MU"]}}}})


async def test_nothing_anchorable_starts_no_backend() -> None:
    feature = MediaFeature(FakeHost({}))  # type: ignore[arg-type]
    await feature.start()
    assert feature.backend is None and not feature.policy.could_anchor()
    status = feature.status()["media"]
    assert status["started"] is False and status["backend"] == "builtin"  # type: ignore[index]
    assert render(status)[0] == "backend builtin: not started (no call anchored yet)"  # type: ignore[arg-type]


async def test_a_builtin_backend_that_cannot_start_is_a_start_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vivait_sip.media.feature.BUILTIN_FACTORY", "vivait_sip.media.nothing_here:create_backend")
    monkeypatch.setattr("vivait_sip.media.feature.load_builtin_factory.__defaults__", ("vivait_sip.media.nothing_here:create_backend",))
    host = FakeHost({"media": {"anchor_users": ["6140"]}})
    feature = MediaFeature(host)  # type: ignore[arg-type]
    with pytest.raises(StartError, match="backend builtin not available yet"):
        await feature.start()
    with pytest.raises(MediaError, match=r"vivait_sip\.media\.nothing_here is not installed"):
        load_builtin_factory("vivait_sip.media.nothing_here:create_backend")
    with pytest.raises(MediaError, match="is missing"):
        load_builtin_factory("vivait_sip.media.control:create_backend")
    status = feature.status()["media"]
    assert "backend builtin not available yet" in str(status["start_error"])  # type: ignore[index]
    # A call anchored later (a feature's requirement) fails its step with the same sentence.
    reply = await feature.request(_offer())
    assert not reply.ok and "backend builtin not available yet" in (reply.error or "")


def _offer() -> Any:
    from vivait_sip.media.control import CallKey, Offer

    return Offer(CallKey("c", "t"), b"v=0\r\n")


async def test_the_builtin_factory_is_used_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []

    class Builtin:
        name = "builtin"
        healthy = True

        def __init__(self, host: Any, settings: Any) -> None:
            made.append((host, settings))

        async def start(self) -> None:
            return None

        async def stop(self) -> None:
            return None

        async def request(self, msg: Any) -> Any:
            raise AssertionError

        def status(self) -> dict[str, object]:
            return {"backend": "builtin", "sessions": 3, "workers": [{"index": 1}]}

    module = SimpleNamespace(create_backend=Builtin)
    monkeypatch.setitem(__import__("sys").modules, "vivait_sip.media.builtin", module)
    host = FakeHost({"media": {"default": "anchor"}})
    feature = MediaFeature(host)  # type: ignore[arg-type]
    await feature.start()
    assert made and made[0][0] is host and made[0][1].default == "anchor"
    status = feature.status()["media"]
    assert status["sessions"] == 3 and status["healthy"] is True  # type: ignore[index]
    await feature.stop()


async def test_rtpengine_backend_starts_and_reports(caplog: pytest.LogCaptureFixture) -> None:
    daemon = await FakeDaemon.start()
    host = FakeHost({
        "media": {"backend": "rtpengine", "rtpengine": {"daemons": [daemon.address], "ping_interval_s": 0}},
        "b2bua": {"dialplan": [{"name": "nat", "media": "anchor", "action": {"type": "user"}},
                               {"name": "lan", "media": "pass", "action": {"type": "user"}}]},
    })
    feature = MediaFeature(host)  # type: ignore[arg-type]
    await feature.start()
    assert isinstance(feature.backend, RtpengineBackend) and feature.backend.healthy
    assert feature.policy.rules == {"nat": "anchor", "lan": "pass"}
    assert feature.policy.decide(call(rule="nat")) == "rule nat" and feature.policy.decide(call(rule="lan")) is None
    assert "media_status" in host.calls
    status = feature.status()["media"]
    assert status["started"] and status["healthy"] and status["daemons"][0]["state"] == "up"  # type: ignore[index]
    host.others = [feature.status()]  # a second worker seeing the same
    merged = await feature.all_status()
    assert merged["workers"] == 2 and merged["daemons"][0]["requests"] == 2  # type: ignore[index]
    text = "\n".join(render(merged))
    assert "backend rtpengine: healthy" in text and f"  {daemon.address}  up" in text and "in 2 worker(s)" in text
    changed = make_config({"media": {"backend": "rtpengine", "rtpengine": {"daemons": ["127.0.0.1:9"]}}})
    with caplog.at_level("WARNING", logger="vivait_sip.media"):
        feature.reload(changed)
    assert "media: backend changes apply at the next restart" in caplog.text
    lines = feature.metrics(feature.status())
    assert 'vivait_media_sessions{backend="rtpengine"} 0' in lines
    assert f'vivait_media_daemon_up{{daemon="{daemon.address}"}} 1' in lines
    assert 'vivait_media_calls_total{decision="anchored"} 0' in lines
    await feature.stop()
    daemon.close()


def test_reload_updates_the_policy_and_keeps_requirements() -> None:
    host = FakeHost({"media": {"anchor_users": ["6140"]}})
    feature = MediaFeature(host)  # type: ignore[arg-type]
    feature.require("moh", lambda c: c.callee_user == "6199")
    assert feature.anchor_required(call(callee_user="6199")) and not feature.anchor_required(call())
    new = make_config({"media": {"default": "anchor", "timeout_s": 2},
                       "b2bua": {"dialplan": [{"name": "lan", "media": "pass", "action": {"type": "user"}}]}})
    feature.reload(new)
    policy = feature.policy
    assert policy.default == "anchor" and policy.users == frozenset() and policy.rules == {"lan": "pass"}
    assert policy.decide(call(rule="lan")) is None and policy.decide(call(rule="other")) == "default"
    assert policy.decide(call(rule="lan", callee_user="6199")) == "feature moh" and feature.seam.timeout_s == 2


def test_policy_order_and_reasons() -> None:
    from vivait_sip.media.anchor import AnchoringPolicy

    policy = AnchoringPolicy(default="anchor", users=["6140"], rules={"lan": "pass", "nat": "anchor"})
    assert policy.decide(call(rule="lan")) is None  # "pass" overrides the default ...
    assert policy.decide(call(rule="lan", user="6140")) == "user 6140"  # ... not a user who needs it
    assert policy.decide(call(rule="nat", user="6140")) == "rule nat"
    assert policy.decide(call(callee_user="6140")) == "user 6140"
    policy.require("broken", lambda c: 1 / 0 > 0)  # a failing requirement anchors (media kept beats media lost)
    assert policy.decide(call(rule="lan")) == "feature broken"
    policy.withdraw("broken")
    assert policy.requirements == [] and AnchoringPolicy().decide(call()) is None


def test_merging_worker_status() -> None:
    ours: dict[str, Any] = {"sessions": 1, "anchored": 2, "healthy": True, "started": True, "workers": 1,
                            "daemons": [{"address": "a:1", "state": "up", "sessions": 1, "requests": 5, "last_error": None}]}
    merge_media(ours, {"sessions": 2, "anchored": 1, "healthy": False, "started": True, "workers": 1, "start_error": None,
                       "daemons": [{"address": "a:1", "state": "down", "sessions": 2, "requests": 1, "last_error": "x"},
                                   {"address": "b:2", "state": "up", "sessions": 0}]})
    assert ours["sessions"] == 3 and ours["anchored"] == 3 and ours["workers"] == 2 and ours["healthy"] is False
    a, b = ours["daemons"]
    assert a == {"address": "a:1", "state": "down", "sessions": 3, "requests": 6, "last_error": "x",
                 "pending": 0, "retransmissions": 0, "timeouts": 0, "refused": 0, "overflow": 0,
                 "unmatched_replies": 0, "malformed_replies": 0}
    assert b["address"] == "b:2"


def test_music_on_hold_and_recording_rules_anchor_their_calls_and_nothing_else() -> None:
    """media.moh "anchored" (the default) anchors only what asks for music: a rule's `moh`
    class, a user's in moh_users; `record: true` anchors its rule's calls; "always"
    anchors every call; "off" none.  Without any of them nothing starts a backend."""
    plain = MediaFeature(FakeHost({}))  # type: ignore[arg-type]
    assert plain.policy.requirements == [] and not plain.policy.could_anchor()
    dialplan = [{"name": "ventas", "moh": "default", "action": {"type": "user"}},
                {"name": "grabadas", "record": True, "action": {"type": "user"}},
                {"name": "local", "action": {"type": "user"}}]
    feature = MediaFeature(FakeHost({"media": {"moh_users": {"6141": "default"}},  # type: ignore[arg-type]
                                     "b2bua": {"dialplan": dialplan}}))
    policy = feature.policy
    assert policy.requirements == ["moh", "recording"] and policy.could_anchor()
    assert policy.decide(call(rule="ventas")) == "feature moh"
    assert policy.decide(call(rule="local", callee_user="6141")) == "feature moh"
    assert policy.decide(call(rule="grabadas")) == "feature recording"
    assert policy.decide(call(rule="local", user="6140", callee_user="6142")) is None
    feature.require("webrtc", lambda c: False)  # a feature's own requirement survives reloads
    feature.reload(make_config({"media": {"moh": "always"}}))
    assert policy.requirements == ["moh", "webrtc"] and policy.decide(call(rule="local")) == "feature moh"
    feature.reload(make_config({"media": {"moh": False}, "b2bua": {"dialplan": dialplan}}))
    assert policy.requirements == ["recording", "webrtc"] and policy.decide(call(rule="ventas")) is None


def test_music_on_hold_classes_must_exist() -> None:
    _, lines = check_document({"media": {"moh_class": "ventas", "moh_users": {"6141": "soporte"},
                                         "moh_classes": {"soporte": "/srv/moh/soporte"}}})
    assert lines == ['media.moh_class: no music-on-hold class "ventas" (media.moh_classes, or "default")'], lines
    assert make_config({"media": {"moh": True}}).media.moh == "anchored"
    with pytest.raises(ValidationError):
        make_config({"media": {"moh": "sometimes"}})


async def test_worker_0_reads_rtpengines_digits_and_sends_each_to_the_worker_owning_the_call() -> None:
    port = free_port()
    host = FakeHost({"media": {"backend": "rtpengine",
                               "rtpengine": {"daemons": ["127.0.0.1:2223"], "dtmf_listen": f"127.0.0.1:{port}"}}})
    feature = MediaFeature(host)  # type: ignore[arg-type]
    heard: list[object] = []
    feature.listen(heard.append)
    await feature.start()
    try:
        report = {"callid": "abc", "source_tag": "t1", "type": "DTMF", "event": 11, "duration": 200, "volume": 8}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
            daemon.sendto(json.dumps(report).encode(), ("127.0.0.1", port))
        for _ in range(100):
            if host.sent:
                break
            await asyncio.sleep(0.01)
        [(worker, event)] = host.sent
        assert worker == 1 and event == MediaDtmf(call_id="abc", tag="t1", leg="t1", digit="#", duration_ms=200, volume=8)
        feature.on_worker_message(0, event)  # arriving in the owner: to the B2BUA's listener
        assert heard == [event]
        assert feature.status()["media"]["dtmf_log"] == {"digits": 1, "bad": 0, "foreign": 0}  # type: ignore[index]
        metrics = "\n".join(feature.metrics(feature.status()))
        assert 'vivait_media_rtpengine_dtmf_reports_total{result="digits"} 1' in metrics
        busy = MediaFeature(host)  # type: ignore[arg-type]
        with pytest.raises(StartError, match=r"media.rtpengine.dtmf_listen: cannot listen on 127.0.0.1:\d+"):
            await busy.start()
    finally:
        await feature.stop()
    assert feature.dtmf_log is None
