"""Test harness: run the real server as a subprocess on free loopback ports and talk SIP to it."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_TIMEOUT_S = 20.0


def xdist_slot() -> int:
    """This test process's index among pytest-xdist's workers (0 without xdist): fixed port
    ranges (media relays, rtpengine) are cut by it so parallel workers never share one."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(worker[2:]) if worker[2:].isdigit() else 0


# Ports for peers (SIPp, baresip, listeners a test names) come from a window below the kernel's
# ephemeral range (32768-), one window per xdist worker.  A port the kernel picked with bind(0)
# and released could be handed by the kernel to any process (another worker's server, an outgoing
# connection) before the peer binds it, and so it was, in CI: "Address already in use".  Here
# nobody but this test process allocates, and each candidate is still checked by binding it.
FIRST_TEST_PORT = 10000
PORTS_PER_SLOT = 2200  # [0, 1400): single ports, cycled; [1400, 1800): fixed blocks; [1800, 2200): rtpengine
SINGLES, BLOCKS, RTPENGINE_BLOCK = 1400, 400, 400
_next_single = 0
_next_block = 0


def _slot_base() -> int:
    return FIRST_TEST_PORT + (xdist_slot() % 8) * PORTS_PER_SLOT


def _bindable(port: int, host: str) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(count: int, host: str = "127.0.0.1", *, even: bool = False) -> int:
    """The first of `count` consecutive ports free for UDP and TCP on `host` (baresip takes its SIP
    port and the next one for TLS, and a range for RTP that starts even)."""
    global _next_single
    base = _slot_base()  # even
    for _ in range(SINGLES):
        offset = _next_single + (_next_single & 1 if even else 0)
        if offset + count > SINGLES:
            _next_single = 0
            continue
        _next_single = offset + count
        if all(_bindable(port, host) for port in range(base + offset, base + offset + count)):
            return base + offset
    raise RuntimeError(f"no {count} free ports in {base}-{base + SINGLES - 1}")


def free_port(host: str = "127.0.0.1") -> int:
    """One port free for both UDP and TCP on `host`."""
    return free_ports(1, host)


def port_block(count: int) -> tuple[int, int]:
    """A fixed range (`port_min`, `port_max`) of this test process for its life, e.g. a media relay's."""
    global _next_block
    first = _slot_base() + SINGLES + _next_block
    if _next_block + count > BLOCKS:
        raise RuntimeError(f"the fixed test port blocks ({BLOCKS} ports) are used up")
    _next_block += count
    return first, first + count - 1


def rtpengine_ports(index: int, count: int) -> tuple[int, int]:
    """The `index`-th (cycled) range of `count` ports for an rtpengine daemon of this test process."""
    blocks = RTPENGINE_BLOCK // count
    first = _slot_base() + SINGLES + BLOCKS + (index % blocks) * count
    return first, first + count - 1


@dataclass
class Server:
    """A `vivait-sip serve` subprocess; `ports[("sip", "udp")]` etc. come from its start-up lines."""

    tmp: Path
    config: dict[str, Any] | None = None
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    ports: dict[tuple[str, str], int] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.json"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "vivait_sip", "serve", "--data-dir", str(self.data_dir)]
        if self.config is not None:
            self.config_path.write_text(json.dumps(self.config))
            cmd += ["--config", str(self.config_path)]
        return cmd + self.args

    def start(self) -> Server:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        self._lines = lines
        deadline = time.monotonic() + READY_TIMEOUT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if line.startswith("listening "):
                _, kind, transport, hostport = line.split()
                self.ports[(kind, transport)] = int(hostport.rsplit(":", 1)[1])
            if line.strip() == "ready":
                return self
        self.kill()
        raise RuntimeError("server did not start:\n" + "\n".join(self.output))

    def collect_output(self, timeout: float = 0.0) -> list[str]:
        """Lines printed since start (logs included)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return self.output
            if line is None:
                return self.output
            self.output.append(line)

    def sip_port(self, transport: str) -> int:
        return self.ports[("sip", transport)]

    @property
    def admin(self) -> str:
        return f"127.0.0.1:{self.ports[('admin', 'http')]}"

    @property
    def admin_token(self) -> str:
        """The admin API token the server made in its data directory."""
        return (self.data_dir / "admin-token").read_text().strip()

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def ctl_args(self) -> list[str]:
        """`vivait-sip ctl` talking to this server (its address and token)."""
        return ["ctl", "--admin", self.admin, "--data-dir", str(self.data_dir)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(5)
        self._reader.join(5)
        self.collect_output()
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def loopback_args(http: bool = True, tls: bool = True, admin: bool = True) -> list[str]:
    """Listeners on OS-chosen ports so tests never collide."""
    args = ["--listen", "udp:127.0.0.1:0", "--listen", "tcp:127.0.0.1:0"]
    if tls:
        args += ["--listen", "tls:127.0.0.1:0"]
    args += ["--http", "127.0.0.1:0"] if http else ["--no-http"]
    if admin:
        args += ["--admin", "127.0.0.1:0"]
    return args


def options_request(port: int, transport: str = "UDP", *, call_id: str = "opt-1", local_port: int = 5999) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:{local_port};branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=t{call_id}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class UdpClient:
    def __init__(self, host: str = "127.0.0.1", sock: socket.socket | None = None) -> None:
        """A UDP socket bound to `host`, or `sock` as given (e.g. one in a network namespace)."""
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
        self.sock = sock
        self.sock.settimeout(2.0)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes, port: int, host: str = "127.0.0.1") -> None:
        self.sock.sendto(data, (host, port))

    def recv(self, timeout: float = 2.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            data, _ = self.sock.recvfrom(65535)
            return data
        except TimeoutError:
            return None

    def recv_final(self, timeout: float = 2.0) -> bytes | None:
        """Skip provisional responses."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            data = self.recv(left)
            if data is None:
                return None
            if not data.startswith(b"SIP/2.0 1"):
                return data
        return None

    def close(self) -> None:
        self.sock.close()


class StreamClient:
    """A TCP (or TLS) connection that reads whole SIP messages by Content-Length."""

    def __init__(self, port: int, tls: bool = False, host: str = "127.0.0.1") -> None:
        raw = socket.create_connection((host, port), timeout=5)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            raw = ctx.wrap_socket(raw, server_hostname=host)
        self.sock = raw
        self.buf = b""

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_raw(self, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65535)
        except TimeoutError:
            return b""
        return chunk

    def recv(self, timeout: float = 2.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end].decode("utf-8", "replace")
                length = 0
                for line in head.split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() in ("content-length", "l"):
                        length = int(value.strip())
                total = end + 4 + length
                if len(self.buf) >= total:
                    msg, self.buf = self.buf[:total], self.buf[total:]
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            chunk = self.recv_raw(left)
            if not chunk:
                if left > 0 and self.closed():
                    return None
                continue
            self.buf += chunk

    def closed(self) -> bool:
        """True once the server closed; data still arriving first is kept in `buf`."""
        try:
            self.sock.settimeout(0.05)
            data = self.sock.recv(65535)
            self.buf += data
            return data == b""
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def status_line(data: bytes | None) -> str:
    assert data is not None, "no response"
    return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


def status_code(data: bytes | None) -> int:
    return int(status_line(data).split(" ")[1])


def header(data: bytes, name: str) -> str | None:
    for line in data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None
