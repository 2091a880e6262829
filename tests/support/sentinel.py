"""A Redis master, its replica and three sentinels on loopback, as real ``redis-server`` processes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import redis

from llmqueue.ops.embedded_redis import find_redis_server
from llmqueue.producer import Producer
from llmqueue.simulator.process import ProviderProcess
from llmqueue.simulator.server import ProviderConfig
from tests.support.reliability import Workers, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings

SERVICE = "llmq-master"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SentinelSet:
    workdir: Path
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    password: str | None = None
    """The data nodes' ``requirepass`` (and the replica's ``masterauth``)."""
    sentinel_password: str | None = None
    """The sentinels' own ``requirepass`` (they use it with each other too)."""
    tls: tuple[Path, Path, Path] | None = None
    """``(CA, certificate, key)``: every process listens on TLS only, replication included."""

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        userinfo = f":{self.password}@" if self.password else ""
        query = {"sentinel_password": self.sentinel_password} if self.sentinel_password else {}
        if self.tls:
            query.update(ssl_ca_certs=str(self.tls[0]), ssl_cert_reqs="required")
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{userinfo}{hosts}/{SERVICE}/0{'?' + urlencode(query) if query else ''}"

    def _options(self, password: str | None) -> dict[str, Any]:
        options: dict[str, Any] = {"password": password, "socket_timeout": 5}
        if self.tls:
            options.update(ssl=True, ssl_ca_certs=str(self.tls[0]))
        return options

    def node(self, port: int) -> redis.Redis:
        """A client of one data node (the master's or the replica's port)."""
        return redis.Redis(host=HOST, port=port, **self._options(self.password))

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, **self._options(self.sentinel_password))

    def _tls_lines(self, port: int) -> list[str]:
        """Configuration lines: listen on ``port``, on TLS only when the set has certificates."""
        if not self.tls:
            return [f"port {port}"]
        ca, cert, key = self.tls
        return [
            "port 0",
            f"tls-port {port}",
            f"tls-cert-file {cert}",
            f"tls-key-file {key}",
            f"tls-ca-cert-file {ca}",
            "tls-auth-clients no",
            "tls-replication yes",
        ]

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.processes[name] = subprocess.Popen(
            [str(find_redis_server()), *args], stdout=log, stderr=subprocess.STDOUT
        )

    def _data_node(self, name: str, port: int, *extra: str) -> None:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        args = ["--bind", HOST, "--dir", str(folder), "--save", ""]
        for line in self._tls_lines(port):  # the configuration lines as command-line options
            option, *values = line.split()
            args += [f"--{option}", *values]
        args += ["--repl-diskless-sync-delay", "0"]  # the replica in sync at once, not after 5 s
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        self._start(name, [*args, "--appendonly", "no", *extra])

    def start(self) -> None:
        self._data_node("master", self.master_port)
        wait_ping(self.node(self.master_port))
        self._data_node("replica", self.replica_port, "--replicaof", HOST, str(self.master_port))
        wait_ping(self.node(self.replica_port))
        for n, port in enumerate(self.sentinel_ports):
            conf = self.workdir / f"sentinel{n}.conf"
            lines = [
                *self._tls_lines(port),
                f"bind {HOST}",
                f"dir {self.workdir}",
                f"sentinel monitor {SERVICE} {HOST} {self.master_port} 2",
                f"sentinel down-after-milliseconds {SERVICE} 1000",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            if self.password:
                lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
            if self.sentinel_password:
                lines.append(f"requirepass {self.sentinel_password}")
            conf.write_text("\n".join(lines) + "\n")
            self._start(f"sentinel{n}", [str(conf), "--sentinel"])
        for port in self.sentinel_ports:
            wait_ping(self.sentinel(port))
        deadline = time.monotonic() + 30
        # The replica in sync and every sentinel seeing it before a failover is tried.
        while time.monotonic() < deadline:
            replicas = [
                self.sentinel(p).sentinel_slaves(SERVICE)  # type: ignore[no-untyped-call]
                for p in self.sentinel_ports
            ]
            synced = self.node(self.replica_port).info("replication").get("master_link_status") == "up"
            if synced and all(r for r in replicas):
                return
            time.sleep(0.2)
        raise TimeoutError("the sentinels did not discover the replica")

    def kill_master(self) -> None:
        process = self.processes["master"]
        process.kill()
        process.wait()

    def master_port_now(self) -> int:
        for port in self.sentinel_ports:
            try:
                host_port = self.sentinel(port).sentinel_get_master_addr_by_name(SERVICE)
                return int(host_port[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def wait_ping(client: redis.Redis, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def sentinel_set(
    workdir: Path,
    *,
    password: str | None = None,
    sentinel_password: str | None = None,
    tls: tuple[Path, Path, Path] | None = None,
) -> Iterator[SentinelSet]:
    servers = SentinelSet(workdir, password=password, sentinel_password=sentinel_password, tls=tls)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@dataclass
class SentinelRun:
    """Everything of a run through the sentinels (see :func:`run_through_sentinels`)."""

    servers: SentinelSet
    provider: ProviderProcess
    workers: Workers
    producer: Producer
    first_master: int
    """The master's port before anything was killed."""


@asynccontextmanager
async def run_through_sentinels(workdir: Path, *, slots: int, workers: int = 2) -> AsyncIterator[SentinelRun]:
    """A master, its replica and three sentinels; a simulated provider (0.2 s a call); ``workers``
    worker processes of ``slots`` slots each, started; and a producer: all given only the sentinels."""
    with (
        sentinel_set(workdir) as servers,
        ProviderProcess(ProviderConfig(api_key=TEST_API_KEY, latency=0.2)) as provider,
    ):
        first_master = servers.master_port_now()
        env = worker_env(servers.url, provider.base_url, TEST_API_KEY, worker_max_jobs=slots)
        with worker_processes(env, workdir) as running:
            await running.start_ready(workers)
            async with Producer(make_settings(servers.url, provider.base_url)) as producer:
                yield SentinelRun(servers, provider, running, producer, first_master)
