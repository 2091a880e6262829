"""A Redis master, its replica and three sentinels on loopback, as real ``redis-server`` processes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from llmqueue.ops.embedded_redis import find_redis_server

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

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the process keeps it)
        self.processes[name] = subprocess.Popen(
            [str(find_redis_server()), *args], stdout=log, stderr=subprocess.STDOUT
        )

    def _data_node(self, name: str, port: int, *extra: str) -> None:
        folder = self.workdir / name
        folder.mkdir(exist_ok=True)
        args = ["--port", str(port), "--bind", HOST, "--dir", str(folder), "--save", ""]
        self._start(name, [*args, "--appendonly", "no", *extra])

    def start(self) -> None:
        self._data_node("master", self.master_port)
        wait_ping(self.master_port)
        self._data_node("replica", self.replica_port, "--replicaof", HOST, str(self.master_port))
        wait_ping(self.replica_port)
        for n, port in enumerate(self.sentinel_ports):
            conf = self.workdir / f"sentinel{n}.conf"
            conf.write_text(
                f"port {port}\nbind {HOST}\ndir {self.workdir}\n"
                f"sentinel monitor {SERVICE} {HOST} {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                f"sentinel failover-timeout {SERVICE} 5000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self._start(f"sentinel{n}", [str(conf), "--sentinel"])
        for port in self.sentinel_ports:
            wait_ping(port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # every sentinel sees the replica before a failover is tried
            replicas = [
                redis.Redis(host=HOST, port=p).sentinel_slaves(SERVICE)  # type: ignore[no-untyped-call]
                for p in self.sentinel_ports
            ]
            if all(r for r in replicas):
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
                host_port = redis.Redis(host=HOST, port=port).sentinel_get_master_addr_by_name(SERVICE)
                return int(host_port[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def wait_ping(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if redis.Redis(host=HOST, port=port, socket_timeout=0.5).ping():
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def sentinel_set(workdir: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(workdir)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()
