"""What the campaigns' benchmarks read of a running RX: its processes, their memory, a CURVE TX socket.

Shared by the modes' benchmarks (:mod:`semalign.campaigns.pca_lora.refusal_bench`,
:mod:`semalign.campaigns.slf.reply_bench`) and the tests that bound what the RX holds.
"""

from __future__ import annotations

import time
from pathlib import Path

import zmq

from common.net.security import TxSecurity, load_public, load_secret
from common.net.transport import TxSocket
from common.wire.protocol import decode
from semalign.campaigns.processes import throwaway_keys


def rx_pids(pid: int) -> list[int]:
    """The RX process and its children (the workers with ``--workers W``)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *map(int, children)]


def status_kib(pid: int, field: str) -> int:
    """A memory figure of ``/proc/PID/status`` (``VmRSS``, ``VmHWM``), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def rss_bytes(pids: list[int]) -> int:
    """The RSS of processes ``pids`` now, summed (those gone count 0), bytes."""
    total = 0
    for pid in pids:
        try:
            total += 1024 * status_kib(pid, "VmRSS")
        except (OSError, ValueError):
            pass
    return total


class PeakRss:
    """Peak RSS increase of processes ``pids`` from now: ``VmHWM`` reset via ``clear_refs`` (Linux >= 4.0).

    :meth:`increases`: bytes per process (their sum bounds the joint peak); :attr:`gone`: the processes
    that exited meanwhile (a worker killed as hung), whose peak is lost.
    """

    def __init__(self, pids: list[int]):
        self.pids = list(pids)
        self.base = {}
        self.gone: list[int] = []
        for pid in self.pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
            self.base[pid] = status_kib(pid, "VmRSS")

    def increases(self) -> dict[int, int]:
        out = {}
        for pid in self.pids:
            try:
                out[pid] = 1024 * max(0, status_kib(pid, "VmHWM") - self.base[pid])
            except (OSError, ValueError):  # gone, or a zombie (no memory figures)
                self.gone.append(pid)
        return out


def tx_socket(address: str, key_dir: Path, name: str, context: zmq.Context) -> TxSocket:
    """A CURVE TX socket with its own key, admitted in ``key_dir/allow``. Give each TX its own ``context``
    (I/O thread), so the honest TX's messages do not queue behind the attacker's encryption here."""
    _, keys = throwaway_keys(key_dir, name)
    return TxSocket(address, context, TxSecurity(load_secret(keys["curve_secret"]),
                                                 load_public(keys["curve_server_public"])))


def wait_for(sock: TxSocket, want: tuple[str, ...], timeout_s: float):
    """The first reply of a type in ``want`` within ``timeout_s`` (others skipped), or None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = sock.recv(50)
        if got is not None:
            msg = decode(got)
            if msg.TYPE in want:
                return msg
    return None
