"""
Talking to Redis: the client for a config (plain, Sentinel, Cluster), one-round-trip
batches of commands and scripts, msgpack (never pickle), and operator-ready errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack
import redis
from redis.cluster import RedisCluster

from .config import Config
from .lua import SCRIPTS, SHAS

log = logging.getLogger(__name__)


class RedisUnavailable(Exception):
    """Redis could not be reached or refused us; the message is operator-ready."""


def connect(conf: Config) -> redis.Redis:
    """A client for ``conf`` (plain, Sentinel or Cluster); no I/O happens until the first command."""
    kwargs: dict[str, Any] = {
        "socket_timeout": conf.socket_timeout,
        "socket_connect_timeout": conf.socket_timeout,
        "decode_responses": False,
    }
    for option in ("username", "password"):
        if getattr(conf, option) is not None:
            kwargs[option] = getattr(conf, option)
    if conf.redis_url.startswith("rediss://"):
        if conf.sentinels or conf.cluster_nodes:
            kwargs["ssl"] = True
        for option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            if getattr(conf, option) is not None:
                kwargs[option] = getattr(conf, option)
    if conf.cluster_nodes:
        from redis.cluster import ClusterNode

        nodes = [ClusterNode(host, int(port)) for host, _, port in (n.rpartition(":") for n in conf.cluster_nodes)]
        return RedisCluster(startup_nodes=nodes, **kwargs)
    if conf.sentinels:
        from redis.sentinel import Sentinel

        addresses = [(host, int(port)) for host, _, port in (n.rpartition(":") for n in conf.sentinels)]
        sentinel_kwargs = {"socket_timeout": conf.socket_timeout, "password": conf.sentinel_password}
        db = int(urlsplit(conf.redis_url).path.strip("/") or 0)
        sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs, **kwargs)
        return sentinel.master_for(conf.sentinel_service, db=db, **kwargs)
    return redis.Redis.from_url(conf.redis_url, **kwargs)


def pack(value: Any) -> bytes:
    # default=str: odd types from YAML (dates, ...) are stored as text, never pickled.
    return msgpack.packb(value, use_bin_type=True, default=str)


def unpack(blob: bytes) -> Any:
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class Batch:
    """
    Commands and script calls sent in one pipeline (one round trip).

    Scripts run by EVALSHA; if Redis lost its script cache (restart, failover)
    the failed calls are loaded and re-sent once. Every script is idempotent.
    """

    def __init__(self, client: redis.Redis):
        self._client = client
        self._ops: list[tuple[str, tuple]] = []

    def __len__(self) -> int:
        return len(self._ops)

    def call(self, *args: Any) -> int:
        self._ops.append(("cmd", args))
        return len(self._ops) - 1

    def script(self, name: str, keys: list[str], args: list[Any]) -> int:
        self._ops.append(("script", (name, keys, args)))
        return len(self._ops) - 1

    def _queue(self, pipe, kind: str, op: tuple) -> None:
        if kind == "cmd":
            pipe.execute_command(*op)
        else:
            name, keys, args = op
            pipe.execute_command("EVALSHA", SHAS[name], len(keys), *keys, *args)

    def execute(self) -> list[Any]:
        if not self._ops:
            return []
        results = self._send(self._ops)
        missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if missing:
            log.info("job_retry: Redis has no cached scripts (restarted?); loading them")
            self._load_scripts()
            for i, result in zip(missing, self._send([self._ops[i] for i in missing]), strict=False):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    def _load_scripts(self) -> None:
        if isinstance(self._client, RedisCluster):  # SCRIPT LOAD goes to every primary
            for body in SCRIPTS.values():
                self._client.script_load(body)
            return
        pipe = self._client.pipeline(transaction=False)
        for body in SCRIPTS.values():
            pipe.script_load(body)
        pipe.execute()

    def _send(self, ops) -> list[Any]:
        if len(ops) == 1:  # no pipeline object for a single command: cheaper on the hot path
            kind, op = ops[0]
            try:
                if kind == "cmd":
                    return [self._client.execute_command(*op)]
                name, keys, args = op
                return [self._client.execute_command("EVALSHA", SHAS[name], len(keys), *keys, *args)]
            except redis.exceptions.ResponseError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for kind, op in ops:
            self._queue(pipe, kind, op)
        return pipe.execute(raise_on_error=False)


def guard(conf: Config, call: Callable, *args: Any) -> Any:
    """Run a Redis call; connection trouble becomes RedisUnavailable with an operator-ready message."""
    try:
        return call(*args)
    except redis.exceptions.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {conf.redis_display} refused the credentials: {exc}") from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        if "SSL" in str(exc) or "certificate" in str(exc):
            raise RedisUnavailable(f"TLS with Redis at {conf.redis_display} failed: {exc}") from exc
        raise RedisUnavailable(f"Redis unreachable at {conf.redis_display}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise RedisUnavailable(f"Redis at {conf.redis_display} refused the credentials: {exc}") from exc
        raise
