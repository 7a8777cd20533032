"""The pair writer: pairs and labels in batches to the store (`pairs.write_batch`), through a spool file that
outlives a killed process, so a restart recovers what was scored and says what was lost.

Every writer (one per server process) appends to its own spool, `<pairs dir>/spool/<pid>-<id>.spool`, with
single `os.write` calls: data written so survives a SIGKILL (it is in the kernel's page cache) though not a
machine crash. The process holds an exclusive `flock` on it while alive. Lines:

    a KIND N      N rows accepted (the request path: one short line per request)
    d KIND N      N rows dropped: the queue was full (not accepted, not lost: counted)
    s KIND JSON   rows ready for the store (after the challenger scored them, or gave up), buffered
    f KIND N      the N oldest buffered rows are in the store
    c             nothing to recover: every accepted row is in the store or carried to a newer spool

A batch is written when `batch` rows wait or the oldest has waited `flush_seconds`, and on `close()`. After a
flush that leaves nothing buffered the writer starts a new spool (the rows still waiting for the challenger
carried over as an `a` line) and marks the old one `c` and deletes it, so spools stay small.

On start (`recover`), every spool whose process is gone (its lock is free) and that is not marked `c` is read:
rows spooled but not flushed are written to the store (a row written twice is read once: `pairs.py`), and
rows accepted but never spooled (waiting for the challenger when the process died) are counted as lost.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from tasks.challenger.pairs import COLUMNS, pairs_dir, pairs_url, where, write_batch
from tasks.challenger.postgres import dsn

log = logging.getLogger("mlops.pairs")
SUFFIX = ".spool"


@dataclass
class Recovery:
    """What a start found in the spools of processes that are gone."""

    recovered: Counter = field(default_factory=Counter)  # kind -> rows written to the store now
    lost: Counter = field(default_factory=Counter)  # kind -> rows accepted, never scored: gone
    spools: int = 0
    problems: list[str] = field(default_factory=list)  # spools that could not be recovered (kept)

    def __str__(self) -> str:
        if not self.spools and not self.problems:
            return "no spool left by a stopped server"
        said = [f"{self.spools} spool(s) of stopped servers read"]
        said += [f"{n:,} {kind} recovered" for kind, n in sorted(self.recovered.items()) if n]
        said += [
            f"{n:,} {kind} lost (accepted, not yet scored)" for kind, n in sorted(self.lost.items()) if n
        ]
        return "; ".join(said + self.problems)


def spool_dir(registered_model: str) -> Path:
    return pairs_dir(registered_model) / "spool"


def _write_line(fd: int, line: bytes) -> None:
    while line:  # a regular file takes all of it at once; the loop only for a short write
        line = line[os.write(fd, line) :]


def recover(registered_model: str, url: str | None = None, folder: Path | None = None) -> Recovery:
    """Read the spools of stopped processes: write their unflushed rows to the store, count the lost ones,
    delete them. A spool whose rows cannot be written (the store is down) is kept for the next start."""
    recovery = Recovery()
    folder = folder or spool_dir(registered_model)
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else []:
        fd = os.open(path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            accepted, spooled, flushed, closed = _parse(path.read_bytes())
            if not closed:
                for kind in COLUMNS:
                    write_batch(registered_model, kind, spooled[kind][flushed[kind] :], url)
                    recovery.recovered[kind] += max(len(spooled[kind]) - flushed[kind], 0)
                    recovery.lost[kind] += max(accepted[kind] - len(spooled[kind]), 0)
                recovery.spools += 1
            path.unlink()
        except Exception as exc:  # the store is down, or the file is unreadable: keep it, say so
            recovery.problems.append(f"{path.name} kept: {type(exc).__name__}: {exc}")
        finally:
            os.close(fd)
    return recovery


def _parse(text: bytes) -> tuple[Counter, dict[str, list], Counter, bool]:
    accepted, flushed, spooled = Counter(), Counter(), {kind: [] for kind in COLUMNS}
    for line in text.split(b"\n"):
        tag, _, rest = line.partition(b" ")
        kind, _, value = rest.partition(b" ")
        name = kind.decode(errors="replace")
        try:
            if tag == b"c":
                return accepted, spooled, flushed, True
            if tag == b"a":
                accepted[name] += int(value)
            elif tag == b"f":
                flushed[name] += int(value)
            elif tag == b"s":
                spooled[name].extend(orjson.loads(value))
        except (ValueError, KeyError, orjson.JSONDecodeError):
            continue  # a line cut short by the kill: its rows count as lost
    return accepted, spooled, flushed, False


def _iso(value: object) -> str:
    """What orjson does not take itself: pandas' Timestamp (a datetime subclass) and the like, as text."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


class PairWriter:
    """Batches one registered model's pairs and labels into the store (`url`, else MLOPS_PAIRS_URL, else
    Parquet), spooled so that a killed process loses only what the challenger had not scored yet.

    `accept` and `drop` are for the request path (a lock and one short `os.write`); `spool`, `flush_if_due`
    and `close` for one writer thread."""

    def __init__(
        self,
        registered_model: str,
        url: str | None = None,
        batch: int = 500,
        flush_seconds: float = 5.0,
        max_pending: int = 10_000,
    ) -> None:
        if batch < 1 or flush_seconds <= 0 or max_pending < 1:
            raise ValueError("batch and max_pending must be at least 1 and flush_seconds above 0")
        self.name, self.url = registered_model, pairs_url(url)
        if self.url:
            dsn(self.url)  # a URL that is not PostgreSQL's fails now, not at the first batch
        self.batch, self.flush_seconds, self.max_pending = batch, flush_seconds, max_pending
        self.folder = spool_dir(registered_model)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recovery = recover(registered_model, self.url, self.folder)
        if self.recovery.spools or self.recovery.problems:
            log.warning("%s pairs: %s", registered_model, self.recovery)
        self.counts: Counter = Counter()  # "recorded pairs", "dropped labels", ...
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._pending: Counter = Counter()  # kind -> rows accepted, not yet spooled
        self._buffers: dict[str, list[dict]] = {kind: [] for kind in COLUMNS}
        self._oldest: float | None = None  # monotonic time the oldest buffered row was spooled
        self._retry_at = 0.0
        self.path, self._fd = self._open()

    def _open(self) -> tuple[Path, int]:
        path = self.folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return path, fd

    # ------------------------------------------------------------------------------------- request path

    def accept(self, kind: str, n: int) -> bool:
        """Count `n` rows of `kind` in (True), or, for pairs, as dropped when `max_pending` pairs already wait
        for the challenger (False). Labels wait for no model: a request's labels are always taken."""
        with self._lock:
            if self._fd < 0:
                return False
            if kind == "pairs" and self._pending["pairs"] + n > self.max_pending:
                self.counts[f"dropped {kind}"] += n
                _write_line(self._fd, b"d %s %d\n" % (kind.encode(), n))
                return False
            self._pending[kind] += n
            _write_line(self._fd, b"a %s %d\n" % (kind.encode(), n))
            return True

    # -------------------------------------------------------------------------------------- writer thread

    def spool(self, kind: str, rows: Sequence[Mapping], accepted: int | None = None) -> None:
        """Rows ready for the store (they stand for `accepted` accepted rows, default as many); buffered."""
        data = orjson.dumps(rows, default=_iso, option=orjson.OPT_SERIALIZE_NUMPY)
        line = b"s %s " % kind.encode() + data + b"\n"
        with self._lock:
            _write_line(self._fd, line)
            self._pending[kind] -= len(rows) if accepted is None else accepted
            self._buffers[kind].extend(rows)
            if self._oldest is None and rows:
                self._oldest = time.monotonic()

    @property
    def buffered(self) -> int:
        return sum(len(rows) for rows in self._buffers.values())

    @property
    def pending(self) -> int:
        """Rows accepted and not yet in the store: waiting for the challenger or for a flush."""
        return sum(self._pending.values()) + self.buffered

    def seconds_until_due(self) -> float | None:
        """How long until the next flush is due; None when nothing is buffered."""
        if self._oldest is None:
            return None
        if any(len(rows) >= self.batch for rows in self._buffers.values()):
            return max(self._retry_at - time.monotonic(), 0.0)
        due = max(self._oldest + self.flush_seconds, self._retry_at)
        return max(due - time.monotonic(), 0.0)

    def flush_if_due(self) -> None:
        wait = self.seconds_until_due()
        if wait is not None and wait <= 0:
            self.flush()

    def flush(self) -> bool:
        """Write every buffered row to the store; False (rows kept, retried later) when it fails."""
        wrote = False
        for kind, rows in self._buffers.items():
            if not rows:
                continue
            try:
                write_batch(self.name, kind, rows, self.url)
            except Exception as exc:  # the store is down: keep the rows (and the spool), try again later
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._retry_at = time.monotonic() + min(self.flush_seconds, 5.0)
                log.warning("%s %s: not written to %s (%s)", self.name, kind, self.where, self.last_error)
                return False
            with self._lock:
                _write_line(self._fd, b"f %s %d\n" % (kind.encode(), len(rows)))
                self.counts[f"recorded {kind}"] += len(rows)
                self._buffers[kind] = []
            wrote = True
        self.last_error, self._oldest = None, None
        if wrote:
            self._rotate()
        return True

    def _rotate(self) -> None:
        """A fresh spool once everything spooled is in the store: the old one says so (`c`) and goes."""
        with self._lock:
            path, fd = self._open()
            for kind, n in self._pending.items():
                if n:
                    _write_line(fd, b"a %s %d\n" % (kind.encode(), n))
            old_path, old_fd = self.path, self._fd
            self.path, self._fd = path, fd
            _write_line(old_fd, b"c\n")
            old_path.unlink()
            os.close(old_fd)

    def close(self) -> bool:
        """Flush and remove the spool; True when everything accepted is in the store. Otherwise the spool
        stays for the next start to recover."""
        done = self.flush() and not sum(self._pending.values())
        with self._lock:
            if self._fd < 0:
                return done
            if done:
                _write_line(self._fd, b"c\n")
                self.path.unlink()
            os.close(self._fd)
            self._fd = -1
        return done

    @property
    def where(self) -> str:
        return where(self.url, self.name)
