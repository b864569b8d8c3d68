"""A TCP proxy the tests can cut and restore: a store that becomes unreachable
mid-run, and comes back, without stopping the machine's own server.

``cut()`` closes every connection open through the proxy and closes each new
one as soon as it is accepted, as a peer behind a failed network path would;
``restore()`` lets connections through again. The proxy listens on a loopback
port of its own; point the server processes' settings at ``proxy.port``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port: int = self._listener.getsockname()[1]
        self._up = True
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    # -- control -----------------------------------------------------------------

    def cut(self) -> None:
        """Drop every open connection; refuse new ones until :meth:`restore`."""
        with self._lock:
            self._up = False
            sockets, self._open = self._open, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        _close(self._listener)

    # -- forwarding --------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                up = self._up
            if not up:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with self._lock:
                    self._open.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass(frozen=True)
class ProxiedStore:
    """What :func:`store_behind_proxy` yields."""

    proxy: Proxy
    #: The environment of a server pool whose store is behind the proxy.
    env: dict[str, str]
    #: The key prefix of the pool's records in Redis (None for the database).
    redis_prefix: str | None


@contextlib.contextmanager
def store_behind_proxy(store: str, prefix: str) -> Iterator[ProxiedStore]:
    """A proxy in front of the test run's store, and the environment that
    points a server pool (:func:`servers.start`) at it: for ``"database"``,
    the keys in the test database reached through the proxy (a second alias,
    while the view's own writes go straight to it); for ``"redis"``, the
    test Redis, under a key prefix of its own made from ``prefix``, whose
    keys are deleted afterwards."""
    from django.conf import settings
    from django.db import connection

    env: dict[str, str] = {}
    redis_prefix = None
    if store == "redis":
        url = urlparse(settings.CACHES["idempotency"]["LOCATION"])
        proxy = Proxy(url.hostname or "127.0.0.1", url.port or 6379)
        redis_prefix = f"{prefix}-{uuid.uuid4().hex[:8]}"
        env["IDEMPOTENCY_TEST_STORE"] = "redis"
        env["IDEMPOTENCY_TEST_REDIS_PREFIX"] = redis_prefix
        env["IDEMPOTENCY_REDIS_URL"] = f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}"
    else:
        database = connection.settings_dict
        proxy = Proxy(database["HOST"] or "127.0.0.1", int(database["PORT"]))
        env["IDEMPOTENCY_TEST_STORE_DB_PORT"] = str(proxy.port)
    try:
        yield ProxiedStore(proxy, env, redis_prefix)
    finally:
        proxy.close()
        if redis_prefix is not None:
            import redis_servers

            redis_servers.delete_keys(redis_prefix)
