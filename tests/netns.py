"""A private network namespace for attack tests: addresses a test controls, off loopback.

`PrivateNet()` creates a namespace and a veth pair: the host end (`server_ip`, in the
test's own namespace, where the server listens) and the namespace end, which carries
every client address (`address(n)`).  Sockets are opened inside the namespace
(`udp_socket`) by a short-lived thread that enters it with setns(2) (a socket stays in
the namespace it was created in), so a test can send from any of those addresses, the
victim's included: that is how a spoofer's datagrams look to the server.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`; names and subnets are random per
run, and `close()` removes everything.
"""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import socket
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _used_prefixes() -> set[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return {field.rsplit(".", 1)[0] for line in out.splitlines() for field in line.split() if field.count(".") == 3 and "/" in field}


class PrivateNet:
    def __init__(self, clients: int = 3) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the attack tests need root (ip netns, veth, setns): run the suite as root")
        tag = secrets.token_hex(3)
        self.name = f"vsip{tag}"
        self.host_if = f"vsh{tag}"
        self.ns_if = f"vsn{tag}"
        used = _used_prefixes()
        # 198.18.0.0/15 (RFC 2544 benchmarking) in /24s, one not already on this host.
        free = [f"198.{a}.{b}" for a in (18, 19) for b in range(256) if f"198.{a}.{b}" not in used]
        self.prefix = random.choice(free)
        self.server_ip = f"{self.prefix}.1"
        self._created = False
        try:
            _ip("netns", "add", self.name)
            self._created = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.server_ip}/24", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            for n in range(clients):
                _ip("-n", self.name, "addr", "add", f"{self.address(n)}/24", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def address(self, n: int) -> str:
        """Client address number `n` (0, 1, ...), inside the namespace."""
        return f"{self.prefix}.{n + 2}"

    def udp_socket(self, host: str, port: int = 0) -> socket.socket:
        """A UDP socket created in the namespace and bound to (host, port)."""
        made: list[socket.socket | BaseException] = []

        def enter_and_open() -> None:
            try:
                fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((host, port))
                made.append(sock)
            except BaseException as exc:  # handed to the caller's thread
                made.append(exc)

        # The thread ends right after: its namespace change never touches another thread.
        thread = threading.Thread(target=enter_and_open)
        thread.start()
        thread.join()
        result = made[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, timeout=10, check=False)
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10, check=False)
            self._created = False

    def __enter__(self) -> PrivateNet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
