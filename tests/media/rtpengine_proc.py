"""Run the real Debian `rtpengine` daemon (userspace forwarding, no kernel module) for a
test: in the foreground, on loopback, NG on a free UDP port, RTP ports from a range of
its own (below the kernel's ephemeral range, so nothing else takes them)."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from harness import free_port, rtpengine_ports

from vivait_sip.media.ng import NgClient, NgError

BINARY = shutil.which("rtpengine") or "/usr/bin/rtpengine"
_ranges = itertools.count()


class Rtpengine:
    """One daemon: `address` is its NG `host:port`; `port_min`..`port_max` its RTP ports."""

    def __init__(self, *, ports: int = 40) -> None:
        self.port_min, self.port_max = rtpengine_ports(next(_ranges), ports)
        self.ng_port = free_port()
        self.address = f"127.0.0.1:{self.ng_port}"
        # where it reports the digits it sees (`--dtmf-log-dest`): `media.rtpengine.dtmf_listen`
        self.dtmf_listen = f"127.0.0.1:{free_port()}"
        self.log = Path(tempfile.mkstemp(prefix="rtpengine-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> Rtpengine:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    BINARY, "--config-file=none", "--foreground", "--log-stderr", "--log-level=5",
                    "--interface=127.0.0.1", f"--listen-ng=127.0.0.1:{self.ng_port}", "--table=-1",
                    f"--port-min={self.port_min}", f"--port-max={self.port_max}", "--delete-delay=0",
                    "--num-threads=1", "--media-num-threads=1", "--timeout=60",
                    f"--dtmf-log-dest={self.dtmf_listen}",
                ],
                stdout=out, stderr=subprocess.STDOUT,
            )
        client = NgClient("127.0.0.1", self.ng_port, timeout_s=0.2, retransmit_s=0.05)
        try:
            for _ in range(100):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rtpengine exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                try:
                    await client.request({"command": "ping"})
                    return self
                except NgError:
                    await asyncio.sleep(0.05)
            raise RuntimeError(f"rtpengine did not answer ping: {self.log.read_text()[-2000:]}")
        finally:
            await client.stop()

    def kill(self) -> None:
        """SIGKILL, as a crash (no goodbye to anyone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.unlink(missing_ok=True)
