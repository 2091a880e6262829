"""A Redis URL into connections: the one translation every llmqueue process uses.

The URL is read by redis-py's own parser (``redis://``, ``rediss://`` for TLS, ``unix://``), query
parameters included: ``rediss://host:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required``,
``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname``, ``socket_connect_timeout`` … Producers and
CLI commands get a client from :func:`redis_client`; workers get arq's settings from
:func:`arq_redis_settings`, built from the same parsed options, so a URL that works for one works
for all, or is refused by all with the same message (through sentinels, workers get their client
from :func:`sentinel_client`, as producers do).

Redis Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]``
(``rediss+sentinel://`` for TLS to the sentinels and the data nodes alike). The user and password are
the data nodes'; the sentinels' own are the query parameters ``sentinel_username`` and
``sentinel_password``; the other query parameters apply to both, as for ``redis://``. Every client
asks the sentinels for the current master on each new connection, so after a failover it reconnects
to the promoted replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as default
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode

from arq.connections import RedisSettings
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from llmqueue.errors import ConfigError
from llmqueue.redaction import redact_url

RedisT = TypeVar("RedisT", bound=Redis)

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


SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_OWN = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class SentinelAddress:
    """A ``redis+sentinel://`` URL read: where the sentinels are and what they serve."""

    sentinels: list[tuple[str, int]]
    service: str
    """The name the sentinels monitor the master under (``sentinel monitor <name> ...``)."""
    options: dict[str, Any] = default(default_factory=dict)
    """Connection options for the data nodes (db, username, password, TLS, timeouts)."""
    sentinel_options: dict[str, Any] = default(default_factory=dict)
    """Connection options for the sentinels themselves (their password, TLS, timeouts)."""


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def sentinel_url(url: str, sentinels: list[str], service: str) -> str:
    """The ``redis+sentinel://`` URL for ``sentinels`` (``host:port`` each) serving ``service``, with the
    scheme's TLS, the credentials, the database and the query parameters of ``url`` (a plain Redis URL)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    userinfo = netloc.rpartition("@")[0]
    path, _, query = path.partition("?")
    db = path.strip("/")
    tls = "rediss" if scheme.lower() == "rediss" else "redis"
    hosts = ",".join(s.strip() for s in sentinels if s.strip())
    return (
        f"{tls}+sentinel://{userinfo + '@' if userinfo else ''}{hosts}/{service}"
        f"{'/' + db if db else ''}{'?' + query if query else ''}"
    )


def parse_sentinel_url(url: str) -> SentinelAddress:
    """Read a ``redis+sentinel://`` URL; ConfigError (password masked) for one that cannot be used."""
    shown = redact_url(url)
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ConfigError(
            f"the Sentinel URL {shown} must end in /service_name or /service_name/db "
            "(the name the sentinels monitor the master under)"
        )
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), str(DEFAULT_SENTINEL_PORT)
        if not host or not port.isdigit():
            raise ConfigError(f"the Sentinel URL {shown} lists {item!r}: give each sentinel as host:port")
        sentinels.append((host.strip("[]"), int(port)))
    params = dict(parse_qsl(query, keep_blank_values=True))
    own = {name.removeprefix("sentinel_"): params.pop(name) for name in _SENTINEL_OWN if name in params}
    db = parts[1] if len(parts) == 2 else "0"
    tls = scheme.lower() == "rediss+sentinel"
    # The data nodes' options, read by redis-py's own parser from the equivalent single-host URL.
    plain = f"{'rediss' if tls else 'redis'}://{userinfo + '@' if userinfo else ''}sentinel/{db}"
    options = redis_options(plain + (f"?{urlencode(params)}" if params else ""), shown=shown)
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    if tls:
        options["ssl"] = True
    sentinel_options = {
        k: v for k, v in options.items() if k.startswith(("socket_", "ssl")) or k == "retry_on_timeout"
    }
    sentinel_options.update({k: unquote(v) for k, v in own.items()})
    return SentinelAddress(sentinels, unquote(parts[0]), options, sentinel_options)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):  # type: ignore[misc]
    """Connections to the master the sentinels name, at most ``max_connections``: beyond them a command
    waits for a free one (as ``BlockingConnectionPool``) instead of failing."""


def sentinel_client(
    address: SentinelAddress,
    *,
    max_connections: int | None = None,
    redis_class: type[RedisT] = Redis,
    **overrides: Any,
) -> RedisT:
    """An asyncio client (a ``redis_class``: arq's ``ArqRedis`` for workers) of the master the sentinels
    name now (and after every failover), with the data nodes' and the sentinels' own credentials and
    TLS options."""
    options = {**address.options, **overrides}
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    if max_connections is not None:
        options.update(max_connections=max_connections, timeout=None)
        pool_class = _BlockingSentinelPool
    sentinel_options = {
        **address.sentinel_options,
        **{k: v for k, v in overrides.items() if k.startswith("socket_")},
    }
    manager = Sentinel(address.sentinels, sentinel_kwargs=sentinel_options, **options)
    client: RedisT = manager.master_for(
        address.service, redis_class=redis_class, connection_pool_class=pool_class
    )
    return client


def redis_options(url: str, *, shown: str | None = None) -> dict[str, Any]:
    """The connection options a Redis URL gives, query parameters included (redis-py's parser).

    Raises ConfigError for a URL redis-py cannot read (the message shows it with its password masked).
    """
    try:
        options: dict[str, Any] = parse_url(url)
        return options
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {shown or redact_url(url)}: {exc}") from None


def redis_client(url: str, *, max_connections: int | None = None, **overrides: Any) -> Redis:
    """An asyncio client for ``url``; ``overrides`` (e.g. ``socket_timeout=10``) win over the URL's.

    With ``max_connections`` the client never opens more sockets than that: commands beyond it wait
    for a free connection instead of opening another (a producer with thousands of waits).
    """
    if is_sentinel_url(url):
        return sentinel_client(parse_sentinel_url(url), max_connections=max_connections, **overrides)
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
    if is_sentinel_url(url):
        return _arq_sentinel_settings(url)
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


def where(url: str) -> str:
    """The Redis server ``url`` names, for log lines (no credentials)."""
    if is_sentinel_url(url):
        address = parse_sentinel_url(url)
        hosts = ",".join(f"{host}:{port}" for host, port in address.sentinels)
        return f"the master of {address.service} (sentinels {hosts})/{address.options.get('db', 0)}"
    options = redis_options(url)
    if "path" in options:
        return f"{options['path']}/{options.get('db', 0)}"
    return f"{options.get('host', 'localhost')}:{options.get('port', 6379)}/{options.get('db', 0)}"


def _arq_sentinel_settings(url: str) -> RedisSettings:
    """arq's settings for a Sentinel URL, for arq's own worker (``arq llmqueue.worker.WorkerSettings``),
    which asks the sentinels for the master itself.

    arq passes the data nodes only their db, user and password, and the sentinels only TLS on or off:
    a URL that needs more (the sentinels' own password, certificates, timeouts) is refused here.
    ``llmqueue worker`` connects through :func:`sentinel_client` instead and takes them all.
    """
    address = parse_sentinel_url(url)
    options = dict(address.options)
    settings = RedisSettings(host=address.sentinels, sentinel=True, sentinel_master=address.service)
    settings.ssl = bool(options.pop("ssl", False))
    settings.database = int(options.pop("db", 0))
    settings.username = options.pop("username", None)
    settings.password = options.pop("password", None)
    extra = sorted(set(options) | {k for k in address.sentinel_options if not k.startswith("ssl")})
    if extra:
        raise ConfigError(
            f"the Sentinel URL {redact_url(url)} sets {', '.join(extra)}, which arq's own worker cannot "
            "apply through Sentinel (it takes only the db, user and password of the data nodes, and TLS on "
            "or off): run `llmqueue worker`, which takes them all"
        )
    return settings
