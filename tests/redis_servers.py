"""Throwaway Redis servers for the tests: plain, TLS (with a CA and
certificates made by ``openssl`` on the spot), a Sentinel watching a
primary, and ones set up to evict or to refuse writes. Each runs on a free
loopback port from a directory of its own, and is stopped and deleted when
its context ends, whatever happened.

A missing binary (``redis-server``, one built with TLS, ``openssl``) skips
the test with the reason; under CI (``CI=true``) it fails it instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import redis_cluster
from redis import ConnectionPool, Redis

HOST = "127.0.0.1"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for ``reason``; fail it under CI, where nothing may be missing."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Server:
    """A running ``redis-server`` (or Sentinel): its port, its files, and
    the process to stop."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    client_options: dict[str, Any]

    def client(self) -> Redis:
        return Redis(host=HOST, port=self.port, **self.client_options)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _binaries() -> list[str]:
    found = [
        redis_cluster.redis_server_binary(),
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
    ]
    return list(dict.fromkeys(path for path in found if path and os.access(path, os.X_OK)))


@contextlib.contextmanager
def _running(arguments: list[str], *, tls: bool = False, **client_options: Any) -> Iterator[Server]:
    """Start ``redis-server`` with ``arguments`` (``{port}`` and ``{dir}``
    filled in) with the first binary that takes them; yield it once it
    answers; stop it and delete its directory."""
    binaries = _binaries()
    if not binaries:
        unavailable("no redis-server binary")
    directory = Path(tempfile.mkdtemp(prefix="idempotency-redis-"))
    try:
        for binary in binaries:
            port = redis_cluster._free_port([])
            filled = [a.format(port=port, dir=directory) for a in arguments]
            log = directory / f"server-{port}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [binary, *filled], cwd=directory, stdout=output, stderr=subprocess.STDOUT
                )
            server = Server(port, directory, process, client_options)
            try:
                if _answers(server):
                    yield server
                    return
            finally:
                server.stop()
        unavailable(
            f"no redis-server here starts with {' '.join(arguments[:4])}…"
            + (" (TLS needs a build with TLS)" if tls else "")
            + f": {log.read_text(errors='replace')[-500:]}"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _answers(server: Server, timeout: float = 20.0) -> bool:
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while server.process.poll() is None:
            try:
                return bool(client.ping())
            except Exception:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
        return False
    finally:
        client.close()


_COMMON = ["--bind", HOST, "--save", "", "--appendonly", "no", "--dir", "{dir}"]


@contextlib.contextmanager
def plain(*arguments: str) -> Iterator[Server]:
    """A plain ``redis-server``, with extra ``arguments`` (``--maxmemory-policy …``)."""
    with _running(["--port", "{port}", *_COMMON, *arguments]) as server:
        yield server


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _certificates(directory: Path) -> Certificates:
    """A CA, and a server and a client certificate signed by it."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("no openssl binary to make the TLS certificates")

    def run(*arguments: str) -> None:
        subprocess.run([openssl, *arguments], cwd=directory, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # quick to make
    run("req", "-x509", *key, "-days", "1", "-subj", "/CN=test-ca",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    # The extensions Python 3.13's strict verification (VERIFY_X509_STRICT)
    # asks of a certificate signed by a CA: its key identifiers among them.
    (directory / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    for name in ("server", "client"):
        run("req", *key, "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.cnf",
            "-out", f"{name}.crt")  # fmt: skip
    names = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
    return Certificates(*(directory / name for name in names))


@contextlib.contextmanager
def tls() -> Iterator[tuple[Server, Certificates]]:
    """A ``redis-server`` on TLS only, which requires a client certificate."""
    directory = Path(tempfile.mkdtemp(prefix="idempotency-tls-"))
    try:
        certificates = _certificates(directory)
        arguments = ["--port", "0", "--tls-port", "{port}", *_COMMON,
                     "--tls-cert-file", str(certificates.server_cert),
                     "--tls-key-file", str(certificates.server_key),
                     "--tls-ca-cert-file", str(certificates.ca),
                     "--tls-auth-clients", "yes"]  # fmt: skip
        with _running(
            arguments,
            tls=True,
            ssl=True,
            ssl_ca_certs=str(certificates.ca),
            ssl_certfile=str(certificates.client_cert),
            ssl_keyfile=str(certificates.client_key),
        ) as server:
            yield server, certificates
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Sentinel:
    primary: Server
    watcher: Server
    #: The name under which the Sentinel knows the primary; one per start,
    #: since django-redis keeps the pool of a URL for the whole process.
    service: str


@contextlib.contextmanager
def sentinel() -> Iterator[Sentinel]:
    """A primary, and a Sentinel that monitors it."""
    service = f"idempotency-{uuid.uuid4().hex[:8]}"
    with plain() as primary:
        config = primary.directory / "sentinel.conf"
        config.write_text(
            f"sentinel monitor {service} {HOST} {primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} 60000\n"
        )
        arguments = [str(config), "--sentinel", "--port", "{port}", "--bind", HOST,
                     "--dir", "{dir}"]  # fmt: skip
        with _running(arguments) as watcher:
            watching = Sentinel(primary, watcher, service)
            _until_watching(watching)
            yield watching


def _until_watching(setup: Sentinel, timeout: float = 20.0) -> None:
    """Wait until the Sentinel has reached the primary: before that, it
    reports it disconnected, and clients find no master."""
    client = setup.watcher.client()
    deadline = time.monotonic() + timeout
    try:
        while True:
            state = client.execute_command("SENTINEL", "MASTER", setup.service)
            if state[b"flags"] == b"master" and int(state[b"port"]) == setup.primary.port:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Sentinel does not see its primary: {state!r}")
            time.sleep(0.05)
    finally:
        client.close()


class ThreadCountingPool(ConnectionPool):
    """A connection pool class of the project's own (``CONNECTION_POOL_CLASS``),
    which redis-py has no asyncio version of. Counts the connections it makes."""

    made = 0

    def make_connection(self) -> Any:
        type(self).made += 1
        return super().make_connection()


def delete_keys(prefix: str, cache_alias: str = "idempotency") -> None:
    """Delete every key under ``prefix:`` in the Redis of the django-redis
    cache ``cache_alias``: what a test's server pool stored there."""
    from django_redis import get_redis_connection

    client = get_redis_connection(cache_alias)
    for batch in _batches(client.scan_iter(match=f"{prefix}:*", count=1000), 500):
        client.delete(*batch)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
