"""Servers the tests start on loopback ports: bound, not guessed.

A port picked by binding port 0 is free when picked, not when the server binds it: another program may take
it in between. So a server is started on a picked port and accepted only once it answers there *and* the
socket listening there belongs to its own process group; if it exits (the port was taken) or someone else
answers, its group is killed and it is started again on another port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable


def pick_port() -> int:
    """A loopback port free at this instant (the kernel's choice for port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bound_socket() -> socket.socket:
    """A listening loopback socket on a port of the kernel's choice: hand it to an in-process server."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def listeners(port: int) -> set[int]:
    """Pids of the processes listening on TCP `port`."""
    import psutil

    return {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }


def owned_by_group(port: int, pgid: int) -> bool:
    """Something listens on `port`, and everything that does is in process group `pgid`."""
    pids = listeners(port)
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    return bool(pids) and groups == {pgid}


def live_members(pgid: int) -> list[int]:
    """The processes of group `pgid` that still run (zombies left: this machine's init may never reap an
    orphan, and a zombie is no process left running)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def end_group(pgid: int) -> bool:
    """SIGKILL whatever is left of process group `pgid`; True if any of it was still running."""
    running = bool(live_members(pgid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return running


def start_on_a_free_port(
    launch: Callable[[int], subprocess.Popen],
    answers: Callable[[int], bool],
    timeout: float,
    what: str,
    attempts: int = 4,
) -> tuple[subprocess.Popen, int]:
    """Start `launch(port)` (a process in a session of its own) until it answers on its port and owns it."""
    failures = []
    for _ in range(attempts):
        port = pick_port()
        process = launch(port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                failures.append(f"port {port}: exited {process.returncode}")
                break
            if answers(port):
                if owned_by_group(port, process.pid):
                    return process, port
                failures.append(f"port {port}: another program answered there")
                break
            time.sleep(0.3)
        else:
            failures.append(f"port {port}: no answer after {timeout:.0f} s")
        end_group(process.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        if failures[-1].endswith("s") and "no answer" in failures[-1]:
            break  # slow, not a conflict: another port will not help
    raise AssertionError(f"{what} did not start: {'; '.join(failures)}")
