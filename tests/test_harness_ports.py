"""The test port allocator: peers get ports nobody else hands out (not the kernel's ephemeral ones)."""

from __future__ import annotations

import socket
from pathlib import Path

from harness import FIRST_TEST_PORT, free_ports, port_block, rtpengine_ports


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_are_consecutive_bindable_below_the_ephemeral_range_and_not_handed_out_twice() -> None:
    seen: set[int] = set()
    for _ in range(30):
        first = free_ports(3)
        ports = set(range(first, first + 3))
        assert not ports & seen  # the window is cycled, not reused at once
        seen |= ports
        assert first >= FIRST_TEST_PORT and first + 2 < ephemeral_range()[0]
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped_and_even_asks_for_an_even_start() -> None:
    taken = free_ports(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", taken + 1))
        for _ in range(5):
            first = free_ports(2, even=True)
            assert first % 2 == 0 and taken + 1 not in (first, first + 1)


def test_blocks_do_not_overlap_the_single_ports_or_each_other() -> None:
    one, two = port_block(4), port_block(4)
    engine = rtpengine_ports(0, 40)
    assert one[1] < two[0] and two[1] < engine[0] and engine[1] < ephemeral_range()[0]
    single = free_ports(1)
    assert not one[0] <= single <= two[1] and not engine[0] <= single <= engine[1]
