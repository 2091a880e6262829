"""Redis over TLS: one ``rediss://…?ssl_ca_certs=…`` URL serves the producer, the CLI and the workers.

A real ``redis-server`` listens on a TLS-only loopback port with a certificate signed by a CA the test
makes with ``openssl``; the CA is trusted only through the URL's ``ssl_ca_certs``, so a process that
ignored the query parameter would fail its certificate check.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from llmqueue.connection import arq_redis_settings, redis_client
from llmqueue.errors import ConfigError
from llmqueue.ops.embedded_redis import find_redis_server
from llmqueue.ops.processes import die_with_parent
from llmqueue.producer import Producer
from llmqueue.simulator.server import RunningProvider
from tests.support.reliability import child_env, worker_env, worker_processes
from tests.support.settings import TEST_API_KEY, make_settings
from tests.support.tls import certificates


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    """A TLS-only redis-server on loopback, and the URL that trusts its CA through the query string."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    binary = find_redis_server()
    ca, cert, key = certificates(tmp_path)
    port = _free_port()
    server = subprocess.Popen(
        [str(binary), "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if server.poll() is not None:
                output = server.stdout.read().decode() if server.stdout else ""
                if "tls" in output.lower() and "support" in output.lower():
                    pytest.skip(f"this redis-server was built without TLS: {output[-300:]}")
                raise AssertionError(f"TLS redis-server exited: {output[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={quote(str(ca))}&ssl_cert_reqs=required"
    finally:
        server.terminate()
        server.wait(10)


def test_worker_settings_take_the_urls_tls_parameters() -> None:
    settings = arq_redis_settings(
        "rediss://u:p@db.example:6380/3?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_certfile=/c.pem"
    )
    assert (settings.host, settings.port, settings.database, settings.ssl) == ("db.example", 6380, 3, True)
    assert (settings.ssl_ca_certs, settings.ssl_cert_reqs, settings.ssl_certfile) == (
        "/etc/ca.pem",
        "required",
        "/c.pem",
    )
    assert (settings.username, settings.password) == ("u", "p")


def test_a_url_parameter_workers_cannot_apply_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="socket_keepalive"):
        arq_redis_settings("redis://localhost/0?socket_keepalive=true")


@pytest.mark.slow
async def test_a_worker_producer_and_cli_share_one_rediss_url_with_its_ca(
    tls_redis_url: str, provider: RunningProvider, tmp_path: Path
) -> None:
    plain = redis_client(tls_redis_url.split("?")[0])  # without the CA: the certificate is refused
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await plain.ping()
    await plain.aclose()

    env = worker_env(tls_redis_url, provider.base_url, TEST_API_KEY)
    with worker_processes(env, tmp_path) as workers:
        (worker,) = await workers.start_ready(1)
        async with Producer(make_settings(tls_redis_url, provider.base_url)) as producer:
            handle = await producer.submit({"messages": [{"role": "user", "content": "over TLS"}]})
            result = await handle.result(timeout=60)
        assert result.status == "succeeded", result
        assert "CERTIFICATE_VERIFY_FAILED" not in worker.output()
        status = subprocess.run(
            [sys.executable, "-m", "llmqueue", "workers"],
            env=child_env(REDIS_URL=tls_redis_url),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
