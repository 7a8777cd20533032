"""Where online state lives: Redis for a service (`MLOPS_REDIS_URL`), this process's dictionary on a laptop.

Both offer the same two things, and `serving/online/state.py` uses nothing else, so the feature path is one:
- `transaction(keys)`: read some keys, then write and delete keys and hash fields all at once, or not at all
  when another writer changed a read key in between (`Conflict`: the caller reads again). Redis does it with
  WATCH/MULTI/EXEC, so several service replicas can share one store; the dictionary with a lock.
- `hash_get(keys, names)`: read hash fields (the transaction index that routes late labels).
Every write sets a wall-clock expiry (`ttl_ms`): an entity nobody touched for that long has nothing the
features read. A Redis that cannot be reached raises `StateUnavailable`: the service answers 503.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

REDIS_URL_ENV = "MLOPS_REDIS_URL"


class StateUnavailable(RuntimeError):
    """The state store cannot be read or written; nothing was scored or changed."""


class Conflict(RuntimeError):
    """Another writer changed a key this transaction read; read again."""


@dataclass
class Writes:
    """What a transaction changes: values to set, keys to delete, hash fields to set."""

    put: dict[str, bytes] = field(default_factory=dict)
    delete: set[str] = field(default_factory=set)
    hash_put: dict[str, dict[str, bytes]] = field(default_factory=dict)

    def hset(self, key: str, name: str, value: bytes) -> None:
        self.hash_put.setdefault(key, {})[name] = value


class MemoryStore:
    """The embedded store: one process's dictionary, expiring lazily on the wall clock."""

    kind = "embedded"

    def __init__(self) -> None:
        self._values: dict[str, tuple[object, float]] = {}  # key -> (bytes or dict of fields, expires at)
        self._lock = threading.Lock()
        self._writes = 0

    @contextmanager
    def transaction(self, keys: Sequence[str], ttl_ms: int) -> Iterator[tuple[list[bytes | None], Writes]]:
        with self._lock:  # readers and writers of this process, one at a time: never a conflict
            now = time.monotonic()
            values = [self._live(key, now) for key in keys]
            writes = Writes()
            yield values, writes
            expires = now + ttl_ms / 1000
            for key in writes.delete:
                self._values.pop(key, None)
            for key, value in writes.put.items():
                self._values[key] = (value, expires)
            for key, fields in writes.hash_put.items():
                current = self._live(key, now)
                merged = {**(current if isinstance(current, dict) else {}), **fields}
                self._values[key] = (merged, expires)
            self._writes += 1
            if self._writes % 10_000 == 0:
                self._sweep(now)

    def hash_get(self, keys: Sequence[str], names: Sequence[str]) -> list[list[bytes | None]]:
        """Per key, the values of `names` (None where absent)."""
        with self._lock:
            now = time.monotonic()
            out = []
            for key in keys:
                fields = self._live(key, now)
                fields = fields if isinstance(fields, dict) else {}
                out.append([fields.get(name) for name in names])
            return out

    def memory_bytes(self) -> int:
        """Bytes of the values held (keys and dictionary overhead excluded)."""
        with self._lock:
            total = 0
            for value, _ in self._values.values():
                total += sum(map(len, value.values())) if isinstance(value, dict) else len(value)
            return total

    def keys(self) -> int:
        with self._lock:
            return len(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def _live(self, key: str, now: float):
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._values[key]
            return None
        return entry[0]

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, expires) in self._values.items() if expires <= now]:
            del self._values[key]


class RedisStore:
    """The service's store: a Redis server (optimistic transactions, so replicas can share it)."""

    kind = "redis"

    def __init__(self, url: str, prefix: str = "") -> None:
        import redis  # lazy: only a service configured with Redis needs the client

        self.url, self.prefix = url, prefix
        self._redis = redis
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)

    @contextmanager
    def transaction(self, keys: Sequence[str], ttl_ms: int) -> Iterator[tuple[list[bytes | None], Writes]]:
        with self._errors(), self._client.pipeline(transaction=True) as pipe:
            if keys:
                pipe.watch(*keys)
                values = pipe.mget(keys)
            else:
                values = []
            writes = Writes()
            yield values, writes
            pipe.multi()
            if writes.delete:
                pipe.delete(*writes.delete)
            for key, value in writes.put.items():
                pipe.set(key, value, px=ttl_ms)
            for key, fields in writes.hash_put.items():
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, ttl_ms)
            try:
                pipe.execute()
            except self._redis.WatchError:
                raise Conflict("a key read by this transaction changed") from None

    def hash_get(self, keys: Sequence[str], names: Sequence[str]) -> list[list[bytes | None]]:
        """Per key, the values of `names` (None where absent): one HMGET each, in one round trip."""
        if not names:
            return [[] for _ in keys]
        with self._errors(), self._client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, list(names))
            return pipe.execute()

    def memory_bytes(self) -> int:
        """Bytes Redis uses for the keys under this store's prefix (MEMORY USAGE, sampled exactly)."""
        with self._errors():
            return sum(
                self._client.memory_usage(key, samples=0) or 0
                for key in self._client.scan_iter(f"{self.prefix}*", count=1000)
            )

    def keys(self) -> int:
        with self._errors():
            return sum(1 for _ in self._client.scan_iter(f"{self.prefix}*", count=1000))

    def clear(self) -> None:
        with self._errors():
            batch = list(self._client.scan_iter(f"{self.prefix}*", count=1000))
            while batch:
                self._client.delete(*batch[:1000])
                batch = batch[1000:]

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            raise StateUnavailable(
                f"the feature state at {_safe(self.url)} cannot be reached: {exc}"
            ) from None
        except self._redis.ResponseError as exc:  # e.g. OOM under maxmemory/noeviction
            raise StateUnavailable(
                f"the feature state at {_safe(self.url)} refused a command: {exc}"
            ) from None


def _safe(url: str) -> str:
    """The URL without a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def open_store(url: str | None, prefix: str = "") -> MemoryStore | RedisStore:
    """Redis at `url` (redis:// or rediss://), else the embedded store."""
    if not url:
        return MemoryStore()
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"the state URL must start with redis://, rediss:// or unix://; got {_safe(url)!r}")
    return RedisStore(url, prefix)
