"""A Redis URL into connections: the one translation every llmqueue process uses.

The URL is read by redis-py's own parser (``redis://``, ``rediss://`` for TLS, ``unix://``), query
parameters included: ``rediss://host:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ``socket_connect_timeout`` … Producers and
CLI commands get a client from :func:`redis_client`; workers get arq's settings from
:func:`arq_redis_settings`, built from the same parsed options, so a URL that works for one works
for all, or is refused by all with the same message.
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url

from llmqueue.errors import ConfigError
from llmqueue.redaction import redact_url

_ARQ_FIELDS = {
    "username": "username",
    "password": "password",
    "db": "database",
    "ssl_keyfile": "ssl_keyfile",
    "ssl_certfile": "ssl_certfile",
    "ssl_cert_reqs": "ssl_cert_reqs",
    "ssl_ca_certs": "ssl_ca_certs",
    "ssl_ca_data": "ssl_ca_data",
    "ssl_check_hostname": "ssl_check_hostname",
    "socket_connect_timeout": "conn_timeout",
    "retry_on_timeout": "retry_on_timeout",
    "max_connections": "max_connections",
}
"""Options of a parsed URL and the ``arq.connections.RedisSettings`` field each one sets."""


def redis_options(url: str) -> dict[str, Any]:
    """The connection options a Redis URL gives, query parameters included (redis-py's parser).

    Raises ConfigError for a URL redis-py cannot read (the message shows it with its password masked).
    """
    try:
        options: dict[str, Any] = parse_url(url)
        return options
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)}: {exc}") from None


def redis_client(url: str, *, max_connections: int | None = None, **overrides: Any) -> Redis:
    """An asyncio client for ``url``; ``overrides`` (e.g. ``socket_timeout=10``) win over the URL's.

    With ``max_connections`` the client never opens more sockets than that: commands beyond it wait
    for a free connection instead of opening another (a producer with thousands of waits).
    """
    options = {**redis_options(url), **overrides}
    pool: ConnectionPool
    if max_connections is not None:
        pool = BlockingConnectionPool(max_connections=max_connections, timeout=None, **options)
    else:
        pool = ConnectionPool(**options)
    return Redis.from_pool(pool)


def arq_redis_settings(url: str) -> RedisSettings:
    """arq's connection settings for ``url``, from the same options as :func:`redis_client`.

    Raises ConfigError naming a query parameter arq's connections cannot take, rather than ignoring it.
    """
    options = redis_options(url)
    connection_class = options.pop("connection_class", None)
    settings = RedisSettings()
    if connection_class is UnixDomainSocketConnection:
        settings.unix_socket_path = options.pop("path")
    else:
        settings.host = options.pop("host", "localhost")
        settings.port = int(options.pop("port", 6379))
    settings.ssl = connection_class is SSLConnection
    for option, field in _ARQ_FIELDS.items():
        if option in options:
            setattr(settings, field, options.pop(option))
    if options:
        names = ", ".join(sorted(options))
        raise ConfigError(
            f"the Redis URL {redact_url(url)} sets {names}, which workers cannot apply: take "
            f"{'it' if len(options) == 1 else 'them'} out of the URL (workers take only "
            f"{', '.join(sorted(_ARQ_FIELDS))} from it)"
        )
    return settings
