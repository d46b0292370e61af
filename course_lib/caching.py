"""Result caching that stays correct: plain data as JSON in Redis, a TTL on every key,
invalidation after the commit, and a lock against stampedes.

A :class:`RedisNamespace` is a Redis client whose keys all live under one prefix, so two
applications, two test runs or two notebook kernels sharing one server never meet (and
nothing here can flush a database). A :class:`JSONCache` stores plain data in it::

    ns = RedisNamespace.from_url("redis://127.0.0.1:6379/0", "myapp:")
    cache = JSONCache(ns, ttl=300)
    summary = cache.get_or_load("dealership:7", lambda: load_summary(7))
    ...
    session.commit()
    cache.invalidate("dealership:7")  # after the commit, never before

(``cache.invalidate_after_commit(session, "dealership:7")``, called anywhere before the
commit, deletes the key once the session commits.)
``get_or_load`` takes a Redis lock on a miss, so that 50 concurrent misses of one key send
one query, not 50 (the others wait for the value). Every method has an ``a``-prefixed
coroutine twin for a namespace over ``redis.asyncio`` (``ns.asyncio()``):
``await cache.aget_or_load(key, aload)``.

JSON, never pickle: ``pickle.loads`` calls whatever callable the payload names, so a
cache that unpickles runs code chosen by whoever could write to Redis. JSON also refuses
ORM instances, which must not be cached anyway (they are detached once their session
closes). :func:`is_pickle` tells whether stored bytes are a pickle, without running them.

What a TTL is for: a delete after the commit can still be lost (Redis down at that moment,
which ``invalidate_after_commit`` logs instead of raising), and a request that read the
database just before the commit can store the old value just after the delete. Both leave
a stale key, for at most its TTL.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import io
import json
import logging
import os
import pickle
import pickletools
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.orm import Session

__all__ = [
    "MISSING",
    "CacheStats",
    "JSONCache",
    "Pipeline",
    "RedisNamespace",
    "is_pickle",
    "kernel_prefix",
    "pickled_globals",
    "pickled_modules",
]


class _Missing:
    """The value of a key that is not in the cache (``None`` is a value one may cache)."""

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "MISSING"


#: What :meth:`JSONCache.get` returns on a miss.
MISSING: Final = _Missing()

_GLOB = re.compile(r"([*?\[\]\\])")


def kernel_prefix(name: str) -> str:
    """``course:<name>:<checkout>:<pid>:``: a key prefix no other process or checkout uses.

    >>> kernel_prefix("08").startswith("course:08:")
    True
    """
    from .backends import checkout_tag

    return f"course:{name}:{checkout_tag()}:{os.getpid()}:"


class RedisNamespace:
    """A Redis client (sync ``redis.Redis`` or ``redis.asyncio.Redis``) confined to a prefix.

    The usual commands take names *inside* the namespace and return what the client
    returns (a coroutine for an async client). One name: ``get``, ``set`` (``ex``/``px``/
    ``nx``/``keepttl``), ``setex``, ``psetex``, ``setnx``, ``getex``, ``getdel``, ``ttl``,
    ``pttl``, ``expire``, ``pexpire``, ``persist``, ``type``, ``incr``/``incrby``/``decr``/
    ``decrby``, the hash commands (``hset``, ``hget``, ``hmget``, ``hgetall``, ``hdel``,
    ``hexists``, ``hincrby``, ``hlen``), the list and set commands (``lpush``, ``rpush``,
    ``lrange``, ``llen``, ``sadd``, ``srem``, ``smembers``, ``scard``) and ``lock`` (redis-py's
    Lock). Several names: ``delete``, ``unlink``, ``exists``, ``touch``, ``mget`` and
    ``mset`` (a mapping). ``pipeline()`` queues prefixed commands for one round trip.
    ``names()`` lists the names in the namespace (SCAN, never KEYS) and ``clear()`` deletes
    them; ``anames()`` / ``aclear()`` for an async client. ``calls`` counts the commands
    sent, by name. There is no FLUSHDB: the namespace can only delete its own keys.
    """

    #: Commands whose first argument is one name (prefixed); the rest is passed as given.
    ONE_NAME = (
        "get",
        "getex",
        "getdel",
        "setex",
        "psetex",
        "setnx",
        "ttl",
        "pttl",
        "expire",
        "pexpire",
        "persist",
        "type",
        "incr",
        "incrby",
        "decr",
        "decrby",
        "hget",
        "hmget",
        "hgetall",
        "hdel",
        "hexists",
        "hincrby",
        "hlen",
        "lpush",
        "rpush",
        "lrange",
        "llen",
        "sadd",
        "srem",
        "smembers",
        "scard",
    )
    #: Commands whose arguments are all names.
    MANY_NAMES = ("delete", "unlink", "exists", "touch")

    def __init__(self, client: Any, prefix: str, *, url: str | None = None):
        if not prefix:
            raise ValueError("a namespace needs a non-empty prefix")
        self.client = client
        self.prefix = prefix
        self.url = url
        self.calls: Counter[str] = Counter()

    @classmethod
    def from_url(cls, url: str, prefix: str, **options: Any) -> RedisNamespace:
        """A sync namespace on a new ``redis.Redis.from_url(url, **options)`` client."""
        import redis

        return cls(redis.Redis.from_url(url, **options), prefix, url=url)

    def asyncio(self, **options: Any) -> RedisNamespace:
        """The same namespace over a new ``redis.asyncio`` client (needs ``from_url``)."""
        import redis.asyncio

        if self.url is None:
            raise ValueError("asyncio() needs a namespace made by RedisNamespace.from_url")
        return RedisNamespace(redis.asyncio.Redis.from_url(self.url, **options), self.prefix)

    @property
    def is_async(self) -> bool:
        """Whether the client is a ``redis.asyncio`` client (commands return coroutines)."""
        return inspect.iscoroutinefunction(getattr(self.client, "execute_command", None))

    def __repr__(self) -> str:
        kind = "async " if self.is_async else ""
        return f"<{type(self).__name__} {kind}{self.prefix!r}>"

    def key(self, name: str) -> str:
        """The full Redis key of ``name``."""
        return f"{self.prefix}{name}"

    def child(self, name: str) -> RedisNamespace:
        """A namespace inside this one: ``prefix + name + ":"`` (same client)."""
        return RedisNamespace(self.client, f"{self.prefix}{name}:", url=self.url)

    def __getattr__(self, command: str) -> Any:
        if command in self.ONE_NAME:

            def one(name: str, *args: Any, **kwargs: Any) -> Any:
                self.calls[command] += 1
                return getattr(self.client, command)(self.key(name), *args, **kwargs)

            return one
        if command in self.MANY_NAMES:

            def many(*names: str) -> Any:
                self.calls[command] += 1
                return getattr(self.client, command)(*(self.key(n) for n in names))

            return many
        offered = ", ".join((*self.ONE_NAME, *self.MANY_NAMES))
        raise AttributeError(
            f"RedisNamespace has no {command!r}: it offers {offered}, set, hset, mget, mset, "
            "lock, pipeline, names, clear (and .client for the raw client, whose keys are "
            "not prefixed)"
        )

    def set(self, name: str, value: Any, **options: Any) -> Any:
        """SET ``name`` (options as redis-py: ``ex``, ``px``, ``nx``, ``xx``, ``keepttl``)."""
        self.calls["set"] += 1
        return self.client.set(self.key(name), value, **options)

    def hset(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """HSET on ``name`` (arguments as redis-py: ``key, value`` or ``mapping=``)."""
        self.calls["hset"] += 1
        return self.client.hset(self.key(name), *args, **kwargs)

    def mget(self, names: Any, *more: str) -> Any:
        """MGET: the values of ``names`` (a list, or several arguments), None where missing."""
        self.calls["mget"] += 1
        listed = [names] if isinstance(names, str | bytes) else list(names)
        return self.client.mget([self.key(n) for n in [*listed, *more]])

    def mset(self, mapping: dict[str, Any]) -> Any:
        """MSET: several names at once (no TTL: give each one with ``expire`` after)."""
        self.calls["mset"] += 1
        return self.client.mset({self.key(n): v for n, v in mapping.items()})

    def lock(self, name: str, **options: Any) -> Any:
        """redis-py's Lock on ``name`` (SET NX PX, released by a compare-and-delete script)."""
        self.calls["lock"] += 1
        return self.client.lock(self.key(name), **options)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        """A pipeline of prefixed commands: queue them, then ``execute()`` sends them at once.

        ``transaction=True`` (redis-py's default) wraps them in MULTI/EXEC. Use it as a
        context manager (``with ns.pipeline() as pipe:``; ``async with`` for an async client).
        """
        self.calls["pipeline"] += 1
        return Pipeline(self.client.pipeline(transaction=transaction), self.prefix, url=self.url)

    def _pattern(self) -> str:
        return _GLOB.sub(r"\\\1", self.prefix) + "*"

    def _name(self, key: Any) -> str:
        text = key.decode() if isinstance(key, bytes) else str(key)
        return text[len(self.prefix) :]

    def names(self) -> list[str]:
        """Names in this namespace (SCAN with a MATCH on the prefix), sorted."""
        self.calls["scan"] += 1
        return sorted(self._name(k) for k in self.client.scan_iter(match=self._pattern()))

    async def anames(self) -> list[str]:
        """Like :meth:`names`, for an async client."""
        self.calls["scan"] += 1
        found = [self._name(k) async for k in self.client.scan_iter(match=self._pattern())]
        return sorted(found)

    def clear(self) -> int:
        """Delete every key of this namespace; returns how many were deleted."""
        names = self.names()
        return int(self.client.delete(*(self.key(n) for n in names))) if names else 0

    async def aclear(self) -> int:
        """Like :meth:`clear`, for an async client."""
        names = await self.anames()
        return int(await self.client.delete(*(self.key(n) for n in names))) if names else 0

    def clear_at_exit(self) -> None:
        """Delete this namespace's keys when the process exits (errors are ignored)."""

        def clear() -> None:
            with contextlib.suppress(Exception):  # at exit, the server may be gone already
                self.clear()

        atexit.register(clear)


class Pipeline(RedisNamespace):
    """A redis-py pipeline confined to a prefix (from :meth:`RedisNamespace.pipeline`).

    Commands queue (they return the pipeline); ``execute()`` sends them and returns their
    replies in order (a coroutine for an async client).
    """

    def execute(self) -> Any:
        """Send the queued commands; their replies, in order."""
        return self.client.execute()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.reset()

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.reset()


def pickled_globals(data: bytes) -> list[str] | None:
    """The callables and classes a pickle names (``module.name``), or None if it is no pickle.

    ``pickle.loads`` imports and calls what these name: that is why it runs code. Only a
    complete opcode stream counts (its STOP is the last byte); nothing is imported or run.

    >>> import pickle
    >>> pickled_globals(pickle.dumps({"a": 1}))
    []
    >>> pickled_globals(b'{"a": 1}') is None, pickled_globals(pickle.dumps(1) + b"x") is None
    (True, True)
    """
    if not data:
        return None
    names: list[str] = []
    strings: list[str] = []
    last = -1
    try:
        for opcode, arg, pos in pickletools.genops(data):
            last = pos if pos is not None else last
            if isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:
        return None
    if last != len(data) - 1:  # bytes after the STOP: not a pickle, whatever its start
        return None
    return list(dict.fromkeys(names))


def pickled_modules(data: bytes) -> list[str] | None:
    """The modules a pickle imports from, or None if ``data`` is no pickle.

    >>> import pickle, collections
    >>> pickled_modules(pickle.dumps(collections.OrderedDict()))
    ['collections']
    """
    names = pickled_globals(data)
    return None if names is None else list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))


class _WouldImport(Exception):
    """Where ``pickle.loads`` would import (and then maybe call) something."""


class _NoImports(pickle.Unpickler):
    """An unpickler that runs no code: it refuses every import and persistent id.

    Without an import there is no callable to call: the opcodes can only build the basic
    types (None, numbers, strings, bytes, lists, tuples, dicts, sets).
    """

    def find_class(self, module: str, name: str) -> Any:
        raise _WouldImport(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _WouldImport("a persistent id")


def is_pickle(data: bytes) -> bool:
    """Whether ``data`` is a complete pickle (any protocol), judged without running it.

    The opcodes must parse to a STOP on the last byte, and a restricted unpickler (which
    refuses every import, so it calls nothing) must read them to the end or stop at their
    first import. ``b"N."`` is a pickle (of None: ``pickle.loads`` accepts it);
    ``b"0."`` (POP on an empty stack) and ``b"1.5"`` (bytes after the STOP) are not.

    >>> import pickle
    >>> is_pickle(pickle.dumps([1, 2])), is_pickle(b"[1, 2]"), is_pickle(b"0."), is_pickle(b"N.")
    (True, False, False, True)
    """
    if not isinstance(data, bytes | bytearray) or pickled_globals(bytes(data)) is None:
        return False
    stream = io.BytesIO(data)
    try:
        _NoImports(stream).load()
    except _WouldImport:
        return True  # a well-formed pickle that imports: the dangerous kind
    except Exception:
        return False
    return stream.tell() == len(data)


@dataclass
class CacheStats:
    """What a :class:`JSONCache` did: hits and misses of ``get``, loads, lock waits, and
    deletes lost after a commit (Redis failed; the keys stay until their TTL)."""

    hits: int = 0
    misses: int = 0
    loads: int = 0
    waits: int = 0
    lost_invalidations: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before any lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


_SESSION_KEY = "course_lib.caching.invalidate"
_log = logging.getLogger("course_lib.caching")


def _invalidate_pending(session: Session) -> None:
    """``after_commit``: each cache deletes the names registered on ``session``."""
    pending: dict[JSONCache, set[str]] = session.info.get(_SESSION_KEY, {})
    for cache, names in list(pending.items()):
        cache._invalidate_quietly(sorted(names))
    pending.clear()


def _forget_pending(session: Session) -> None:
    """``after_rollback``: nothing was written, nothing to delete."""
    session.info.get(_SESSION_KEY, {}).clear()


class JSONCache:
    """Plain data as JSON in a :class:`RedisNamespace`, with a TTL on every key.

    ``ttl`` (seconds) is set on every key written. On a miss, ``get_or_load`` takes a
    lock (``<name>:lock``, expiring after ``lock_timeout``): the holder checks the key
    again, loads and stores the value; the others poll every ``poll`` seconds until the
    value is there (at most ``wait`` seconds). With ``lock=False`` every miss loads.
    """

    def __init__(
        self,
        redis: RedisNamespace,
        ttl: float,
        *,
        lock_timeout: float = 10.0,
        poll: float = 0.002,
        wait: float = 10.0,
    ):
        if ttl <= 0:
            raise ValueError("every key needs a TTL: ttl must be > 0 seconds")
        self.redis, self.ttl = redis, ttl
        self.lock_timeout, self.poll, self.wait = lock_timeout, poll, wait
        self.stats = CacheStats()

    def __repr__(self) -> str:
        return f"<JSONCache {self.redis.prefix!r} ttl={self.ttl:g}s>"

    # -------------------------------------------------------------- encoding

    @staticmethod
    def encode(value: Any) -> bytes:
        """``value`` as compact JSON bytes; anything but plain data raises TypeError."""
        try:
            return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        except TypeError as exc:
            raise TypeError(
                f"{exc}: cache plain data (dicts, lists, strings, numbers), never ORM "
                "instances or other objects"
            ) from None

    @staticmethod
    def decode(raw: bytes | None) -> Any:
        """Stored bytes back to plain data (``MISSING`` for None)."""
        return MISSING if raw is None else json.loads(raw)

    def _px(self) -> int:
        return max(1, round(self.ttl * 1000))

    def _lock(self, name: str) -> Any:
        return self.redis.lock(
            f"{name}:lock",
            timeout=self.lock_timeout,
            blocking=False,
            thread_local=False,
            raise_on_release_error=False,
        )

    def _count(self, value: Any) -> Any:
        if value is MISSING:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return value

    # ------------------------------------------------------------------ sync

    def get(self, name: str) -> Any:
        """The cached value of ``name``, or ``MISSING`` (counted as a hit or a miss)."""
        return self._count(self.decode(self.redis.get(name)))

    def set(self, name: str, value: Any) -> None:
        """Store ``value`` as JSON under ``name``, expiring after ``ttl``."""
        self.redis.set(name, self.encode(value), px=self._px())

    def invalidate(self, *names: str) -> int:
        """Delete ``names``; returns how many existed. Call it after the commit."""
        return int(self.redis.delete(*names)) if names else 0

    def fill(self, name: str, load: Callable[[], Any], *, lock: bool = True) -> Any:
        """After a miss: load and store the value (under the lock, unless ``lock=False``)."""
        if not lock:
            return self._load_and_set(name, load)
        guard = self._lock(name)
        deadline = time.monotonic() + self.wait
        while True:
            if guard.acquire():
                try:
                    value = self.decode(self.redis.get(name))  # filled while we waited?
                    return self._load_and_set(name, load) if value is MISSING else value
                finally:
                    guard.release()
            time.sleep(self.poll)
            self.stats.waits += 1
            value = self.decode(self.redis.get(name))
            if value is not MISSING:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.wait:g} s for {name!r} to be filled")

    def _load_and_set(self, name: str, load: Callable[[], Any]) -> Any:
        value = load()
        self.stats.loads += 1
        self.set(name, value)
        return value

    def get_or_load(self, name: str, load: Callable[[], Any], *, lock: bool = True) -> Any:
        """The cached value, or ``load()`` stored under ``name`` (see :meth:`fill`)."""
        value = self.get(name)
        return self.fill(name, load, lock=lock) if value is MISSING else value

    def invalidate_after_commit(self, session: Session, *names: str) -> None:
        """Delete ``names`` once ``session`` commits (nothing happens if it rolls back).

        The names pile up in ``session.info``, per cache (two caches on one session each
        delete their own), and one ``after_commit`` listener per session deletes them, after
        the database has made the write visible. If Redis fails then (down, or slower than
        the client's ``socket_timeout``, which the commit waits for), the failure is logged
        on the ``course_lib.caching`` logger and counted in ``stats.lost_invalidations``,
        never raised: the database has committed, and ``session.commit()`` must not say it
        failed. The keys then stay stale until their TTL: that is what the TTL is for.
        """
        pending: dict[JSONCache, set[str]] | None = session.info.get(_SESSION_KEY)
        if pending is None:
            pending = session.info[_SESSION_KEY] = {}
            event.listen(session, "after_commit", _invalidate_pending)
            event.listen(session, "after_rollback", _forget_pending)
        pending.setdefault(self, set()).update(names)

    def _invalidate_quietly(self, names: list[str]) -> None:
        import redis

        try:
            self.invalidate(*names)
        except (redis.exceptions.RedisError, OSError) as exc:
            self.stats.lost_invalidations += len(names)
            _log.warning(
                "could not delete %d cache key(s) after the commit (%s: %s); they stay "
                "stale until their TTL (%g s): %s",
                len(names),
                type(exc).__name__,
                exc,
                self.ttl,
                ", ".join(self.redis.key(n) for n in names),
            )

    # ----------------------------------------------------------------- async

    async def aget(self, name: str) -> Any:
        """Like :meth:`get`, on an async namespace."""
        return self._count(self.decode(await self.redis.get(name)))

    async def aset(self, name: str, value: Any) -> None:
        """Like :meth:`set`, on an async namespace."""
        await self.redis.set(name, self.encode(value), px=self._px())

    async def ainvalidate(self, *names: str) -> int:
        """Like :meth:`invalidate`, on an async namespace (await it after the commit)."""
        return int(await self.redis.delete(*names)) if names else 0

    async def afill(
        self, name: str, load: Callable[[], Awaitable[Any]], *, lock: bool = True
    ) -> Any:
        """Like :meth:`fill`; ``load`` is an async function."""
        if not lock:
            return await self._aload_and_set(name, load)
        guard = self._lock(name)
        deadline = time.monotonic() + self.wait
        while True:
            if await guard.acquire():
                try:
                    value = self.decode(await self.redis.get(name))
                    return await self._aload_and_set(name, load) if value is MISSING else value
                finally:
                    await guard.release()
            await asyncio.sleep(self.poll)
            self.stats.waits += 1
            value = self.decode(await self.redis.get(name))
            if value is not MISSING:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.wait:g} s for {name!r} to be filled")

    async def _aload_and_set(self, name: str, load: Callable[[], Awaitable[Any]]) -> Any:
        value = await load()
        self.stats.loads += 1
        await self.aset(name, value)
        return value

    async def aget_or_load(
        self, name: str, load: Callable[[], Awaitable[Any]], *, lock: bool = True
    ) -> Any:
        """Like :meth:`get_or_load`; ``load`` is an async function."""
        value = await self.aget(name)
        return await self.afill(name, load, lock=lock) if value is MISSING else value
