"""The built-in backend's settings: port slices, the advertised address, checks."""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from vivait_sip.media.settings import BuiltinMediaSettings, MediaWorkerSpec


def test_the_port_range_is_cut_into_even_contiguous_slices() -> None:
    settings = BuiltinMediaSettings(port_min=30001, port_max=39999)
    slices = settings.slices(3)
    assert slices[0][0] == 30002 and all(lo % 2 == 0 and hi % 2 == 1 for lo, hi in slices)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(slices))
    assert slices[-1][1] <= 39999
    assert {(hi - lo + 1) // 2 for lo, hi in slices} <= {1666, 1667}
    with pytest.raises(ValueError):
        BuiltinMediaSettings(port_min=30000, port_max=30005).slices(4)


def test_checks() -> None:
    with pytest.raises(ValidationError):
        BuiltinMediaSettings(port_min=30000, port_max=30001)
    with pytest.raises(ValidationError):
        BuiltinMediaSettings(colour="red")  # type: ignore[call-arg]
    assert BuiltinMediaSettings(bind="10.0.0.1").advertised() == "10.0.0.1"
    assert BuiltinMediaSettings(bind="0.0.0.0", advertise="203.0.113.1").advertised() == "203.0.113.1"
    with pytest.raises(ValueError, match=r"media\.advertise"):
        BuiltinMediaSettings(bind="0.0.0.0").advertised()
    assert BuiltinMediaSettings().worker_count() >= 1


def test_the_spec_travels_as_json() -> None:
    spec = MediaWorkerSpec(index=1, count=2, port_min=35000, port_max=39999, link_fds=[5, 6], data_dir="/tmp/x", settings=BuiltinMediaSettings(workers=2))
    assert MediaWorkerSpec.model_validate_json(spec.model_dump_json()) == spec
