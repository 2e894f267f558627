"""The Redis server the Redis-backed peers share: its address, a reachability check."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from bench.common import Skip

#: A database number of its own, emptied between runs; nothing else should use it.
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def require_redis() -> str:
    """Raise Skip unless Redis answers PING at REDIS_URL; return its version."""
    url = urlparse(REDIS_URL)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(64).startswith(b"+PONG"):
                raise Skip(f"Redis at {host}:{port} did not answer PING")
    except OSError as exc:
        raise Skip(f"Redis is not reachable at {host}:{port} ({exc})") from exc
    import redis

    info = redis.Redis.from_url(REDIS_URL).info("server")
    return str(info.get("redis_version", "?"))


def redis_durability() -> str:
    """How the server persists data, as a line for the results."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    aof = client.config_get("appendonly").get("appendonly")
    fsync = client.config_get("appendfsync").get("appendfsync")
    save = client.config_get("save").get("save") or "off"
    if aof == "yes":
        return f"Redis AOF on (appendfsync {fsync}), RDB save '{save}'"
    return f"Redis persistence: AOF off, RDB save '{save}' (tasks in memory only)"


def flush() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()
