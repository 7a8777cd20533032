"""`make up`'s Redis (infra/servers/redis_server.py), for real: redis-server started through the module on a
free loopback port in a temporary state folder. It runs with the settings the feature state needs (checked
with CONFIG GET), a second `up` reuses it, a full Redis refuses writes and evicts nothing, `stop` ends it
(its pid gone, its port refusing), a restart keeps the data and `purge` deletes it. An external Redis
(MLOPS_REDIS_URL) is used as it is; a taken port, a missing binary and a bad size are refused up front.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import redis
from conftest import needs
from ports import live_members, pick_port

from infra.servers import redis_server
from infra.servers.processes import Managed
from infra.servers.settings import ServerError, Settings


def _settings(state_dir: Path, **env: str) -> Settings:
    return Settings.from_env({"MLOPS_ENV_FILE": "", "MLOPS_SERVERS_DIR": str(state_dir), **env})


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def started(tmp_path):
    """`up` on a port picked free (another one if a program took it before Redis bound it); stopped after."""
    if shutil.which("redis-server") is None and not redis_server.BINARY.is_file():
        needs("redis-server", "install Debian's redis-server")
    for attempt in range(3):
        settings = _settings(
            tmp_path / f"servers-{attempt}", MLOPS_REDIS_PORT=str(pick_port()), MLOPS_REDIS_MAXMEMORY="64mb"
        )
        process = Managed(redis_server.NAME, settings.state_dir)
        try:
            env = redis_server.up(settings, timeout=30)
            break
        except ServerError as exc:
            process.stop(timeout=5)
            lost_the_port = "taken by another program" in str(exc) or "Address already in use" in str(exc)
            if attempt == 2 or not lost_the_port:
                raise
    try:
        yield settings, env
    finally:
        process.stop(timeout=10)


def test_up_starts_redis_for_the_feature_state_reuses_it_and_stops_it(started, capsys):
    settings, env = started
    port = settings.redis_port
    url = env[redis_server.URL_ENV]
    assert env == {"MLOPS_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    process = Managed(redis_server.NAME, settings.state_dir)
    pid = process.pid()
    client = _client(url)
    assert client.ping() and client.info("server")["process_id"] == pid
    config = {name: client.config_get(name)[name] for name in ("appendonly", "appendfsync", "save", "dir")}
    assert config == {
        "appendonly": "yes",
        "appendfsync": "everysec",
        "save": "",
        "dir": str(settings.state_dir / "redis"),
    }
    assert client.config_get("maxmemory")["maxmemory"] == str(64 * 2**20)
    assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    client.set("card:1", "3")

    # Full: writes fail loudly, nothing is evicted. The next `up` reuses the server and restores maxmemory.
    client.config_set("maxmemory", "1")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("card:2", "1")
    assert client.get("card:1") == "3"
    capsys.readouterr()
    assert redis_server.up(settings, timeout=30) == env
    assert process.pid() == pid and f"redis: already running (pid {pid})" in capsys.readouterr().out
    assert client.config_get("maxmemory")["maxmemory"] == str(64 * 2**20)
    client.close()

    assert process.stop(timeout=10)
    assert live_members(pid) == [] and process.pid() is None and _refused(port)

    # Restarted (here by a shell that sourced client.env: its own URL is no external Redis), the data is back.
    again = _settings(
        settings.state_dir, MLOPS_REDIS_PORT=str(port), MLOPS_REDIS_MAXMEMORY="64mb", MLOPS_REDIS_URL=url
    )
    assert redis_server.up(again, timeout=30) == env and process.pid() not in (None, pid)
    with _client(url) as client:
        assert client.get("card:1") == "3"
    assert process.stop(timeout=10)
    assert redis_server.purge(settings.state_dir) and not (settings.state_dir / "redis").exists()


def test_an_external_redis_is_used_as_it_is_and_nothing_starts(started, tmp_path, capsys):
    _, env = started
    other = _settings(tmp_path / "other", MLOPS_REDIS_URL=env[redis_server.URL_ENV])
    assert redis_server.up(other, timeout=30) == env
    assert "started none" in capsys.readouterr().out
    assert not (other.state_dir / "redis.pid").exists() and not (other.state_dir / "redis").exists()

    nowhere = _settings(tmp_path / "none", MLOPS_REDIS_URL=f"redis://:s3cret@127.0.0.1:{pick_port()}/0")
    with pytest.raises(ServerError, match="does not answer") as refused:
        redis_server.up(nowhere, timeout=5)
    assert "s3cret" not in str(refused.value) and ":***@127.0.0.1" in str(refused.value)


def test_a_taken_port_a_missing_binary_and_a_bad_size_are_refused(tmp_path, monkeypatch):
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", 0))
        other_program.listen()
        taken = _settings(tmp_path, MLOPS_REDIS_PORT=str(other_program.getsockname()[1]))
        with pytest.raises(ServerError, match="taken by another program.*MLOPS_REDIS_PORT"):
            redis_server.up(taken, timeout=5)
    assert Managed(redis_server.NAME, tmp_path).pid() is None

    with pytest.raises(ServerError, match="MLOPS_REDIS_MAXMEMORY='lots' is no memory size"):
        redis_server.config("lots")
    assert redis_server.config("2GB")["maxmemory"] == "2gb"

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redis_server, "BINARY", tmp_path / "redis-server")
    with pytest.raises(ServerError, match=r"apt-get install redis-server.*MLOPS_REDIS_URL"):
        redis_server.command(_settings(tmp_path))
