"""`make up`'s Redis: the model server's per-card and per-terminal feature state (`mlops serve-model`),
natively on loopback; compose runs the `redis` service (image redis:7) with the same `config`. The model
server finds it through MLOPS_REDIS_URL, which `make up` writes into client.env and runner.env and gives
`mlops serve`; where that variable is unset, the model server keeps its state in process.

MLOPS_REDIS_PORT (6390: beside, not on, the 6379 of a system Redis) and MLOPS_REDIS_MAXMEMORY (256mb) set it
up. With MLOPS_REDIS_URL naming another Redis (e.g. the machine's, redis://127.0.0.1:6379/0), `make up` starts
none: it checks that one answers and warns when its eviction policy is not `noeviction`.

Why these settings:
- `appendonly yes`, `appendfsync everysec`: the state is a running aggregate of every transaction seen, so
  every write is logged; a crash loses at most the last second of updates (fsync on every write would put a
  disk flush into each request's latency), and the model server's warm start from history rebuilds the rest.
  No RDB snapshots (`save ""`): the append-only file, rewritten with an RDB base, is the copy; a second one
  would only double the forks and the disk writes.
- `maxmemory` with `noeviction`: evicting a card's or a terminal's state would make the next score silently
  wrong (features from a partial history). Full, Redis refuses writes instead (an OOM error), the model server
  answers 503, and the operator raises MLOPS_REDIS_MAXMEMORY (applied to the running server by the next `up`).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from infra.servers.health import redis_pid, redis_problem
from infra.servers.processes import Managed, port_open, wait_until
from infra.servers.settings import ServerError, Settings

NAME = "redis"  # the Managed name (redis.pid, redis.log; the data in redis/); "redis-server" is its marker
URL_ENV = "MLOPS_REDIS_URL"  # what the model server reads
HOST = "127.0.0.1"
BINARY = Path("/usr/bin/redis-server")  # Debian's package redis-server, when not on PATH
_MEMORY = re.compile(r"\d+(?:[kmg]b?|b)?", re.IGNORECASE)  # Redis's own memory units


def config(maxmemory: str) -> dict[str, str]:
    """The persistence and memory settings the feature state needs (the module docstring says why)."""
    if not _MEMORY.fullmatch(maxmemory.strip()):
        raise ServerError(f"MLOPS_REDIS_MAXMEMORY={maxmemory!r} is no memory size (say 256mb or 2gb)")
    return {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
        "maxmemory": maxmemory.strip().lower(),
        "maxmemory-policy": "noeviction",
    }


def data_dir(state_dir: Path) -> Path:
    return state_dir / NAME


def local_url(settings: Settings) -> str:
    """Where `up`'s own Redis answers."""
    return f"redis://{HOST}:{settings.redis_port}/0"


def external_url(settings: Settings) -> str | None:
    """MLOPS_REDIS_URL when it names another Redis than `up`'s own (a shell that sourced client.env carries
    `up`'s own URL: that one is still started here)."""
    if settings.redis_url and settings.redis_url != local_url(settings):
        return settings.redis_url
    return None


def url(settings: Settings) -> str:
    """What clients get as MLOPS_REDIS_URL: the external Redis's, else `up`'s own."""
    return external_url(settings) or local_url(settings)


def redacted(url: str) -> str:
    """`url` with its password, if any, replaced by ***: what may be printed."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def binary() -> str:
    found = shutil.which("redis-server") or (str(BINARY) if BINARY.is_file() else None)
    if found is None:
        raise ServerError(
            "redis-server is not installed: install it (Debian/Ubuntu: `apt-get install redis-server`), or "
            f"set {URL_ENV} to a running Redis (then `make up` starts none)"
        )
    return found


def command(settings: Settings) -> list[str]:
    """redis-server on loopback in the foreground, its data under the state folder, with `config`."""
    options = {
        "bind": HOST,
        "port": str(settings.redis_port),
        "dir": str(data_dir(settings.state_dir)),
        "daemonize": "no",  # stays the leader of the process group `Managed` stops
        **config(settings.redis_maxmemory),
    }
    return [binary(), *(arg for key, value in options.items() for arg in (f"--{key}", value))]


def up(settings: Settings, timeout: float) -> dict[str, str]:
    """Start Redis unless it runs (or use MLOPS_REDIS_URL's), wait until it answers as the process started
    here, and return the client environment: {MLOPS_REDIS_URL: ...}."""
    external = external_url(settings)
    if external:
        return _use_external(external)
    process, where, port = Managed(NAME, settings.state_dir), local_url(settings), settings.redis_port
    pid = process.pid()
    if pid is None:
        if port_open(HOST, port):
            if settings.redis_url == where:  # MLOPS_REDIS_URL names a Redis this folder did not start
                return _use_external(where)
            raise ServerError(
                f"redis: port {port} is taken by another program; choose another one (MLOPS_REDIS_PORT), "
                f"or set {URL_ENV} to use the Redis there"
            )
        data_dir(settings.state_dir).mkdir(parents=True, exist_ok=True)
        pid = process.start(command(settings), {})
        print(f"  redis: started (pid {pid}), {where}, log {process.log_file}")
    elif not port_open(HOST, port):
        raise ServerError(
            f"redis: the running one (pid {pid}) does not listen on port {port}; "
            "`make down` first to change MLOPS_REDIS_PORT"
        )
    else:
        print(f"  redis: already running (pid {pid}), {where}")

    def answers_as_ours() -> bool:
        answering = redis_pid(where)
        if answering is not None and answering != pid:
            raise ServerError(f"redis: {where} answers from pid {answering}, not from the one started here")
        return answering == pid

    wait_until(answers_as_ours, timeout, "Redis", process, interval=0.2)
    _apply_maxmemory(where, config(settings.redis_maxmemory)["maxmemory"])
    return {URL_ENV: where}


def purge(state_dir: Path) -> bool:
    """Delete the data of `up`'s Redis (`down --purge`, once it is stopped); False when there was none."""
    folder = data_dir(state_dir)
    if not folder.is_dir():
        return False
    shutil.rmtree(folder)
    return True


def _use_external(url: str) -> dict[str, str]:
    problem = redis_problem(url, timeout=5.0)
    if problem:
        raise ServerError(f"redis: {URL_ENV}={redacted(url)} does not answer: {problem}")
    policy = _config_get(url, "maxmemory-policy")
    warning = (
        ""
        if policy in (None, "noeviction")
        else f"\n  redis: WARNING its maxmemory-policy is {policy}: when full it drops feature state "
        "silently; set it to noeviction"
    )
    print(f"  redis: using {URL_ENV}={redacted(url)}, started none{warning}")
    return {URL_ENV: url}


def _config_get(url: str, name: str) -> str | None:
    """A setting of the Redis at `url`; None where CONFIG is not allowed (managed services disable it)."""
    import redis  # why: the client takes a second to import on a busy machine; only `up` needs it

    try:
        with redis.Redis.from_url(url, socket_timeout=5, decode_responses=True) as client:
            return client.config_get(name).get(name)
    except redis.exceptions.RedisError:
        return None


def _apply_maxmemory(url: str, maxmemory: str) -> None:
    """A running Redis takes a changed MLOPS_REDIS_MAXMEMORY at once (no restart, nothing lost)."""
    import redis  # why: as in `_config_get`

    with redis.Redis.from_url(url, socket_timeout=5, decode_responses=True) as client:
        before = client.config_get("maxmemory")["maxmemory"]
        client.config_set("maxmemory", maxmemory)
        after = client.config_get("maxmemory")["maxmemory"]
    if after != before:
        print(f"  redis: maxmemory {before} -> {after} bytes (MLOPS_REDIS_MAXMEMORY)")
