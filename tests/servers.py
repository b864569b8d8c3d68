"""A real gunicorn server pool serving the test project against the test database.

Used by tests that need several processes at once (duplicate storms, workers
killed mid-request). The pool listens on a loopback socket opened here and
handed to gunicorn (``fd://``), so no other process can take its port between
choosing and binding it. Its workers use the exact database the test runner
created, through ``IDEMPOTENCY_DB_NAME_OVERRIDE``.

The pool's stderr (gunicorn's log, Django's request errors and the package's
warnings) goes to a file; :meth:`Server.log` reads it.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import testproject

#: The directory of ``manage.py``: the server's cwd and its ``PYTHONPATH``.
TESTPROJECT_DIR = Path(testproject.__file__).resolve().parent.parent

#: Written to the server's stderr by each worker once it has loaded Django.
READY_MARKER = "idempotency-test-worker-ready"

# gunicorn settings file: request errors that Django would only mail to ADMINS
# when DEBUG is off are written to stderr, and each worker says when it has
# loaded the application, so that start() can wait for the whole pool.
GUNICORN_CONFIG = f"""
import logging
import sys


def post_worker_init(worker):
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.ERROR)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s")
    )
    logging.getLogger("django.request").addHandler(handler)
    print("{READY_MARKER}", worker.pid, file=sys.stderr, flush=True)
"""


class ServerError(RuntimeError):
    """The server pool did not start."""


@dataclass
class Server:
    """A running gunicorn pool. Stop it with :meth:`stop`."""

    host: str
    port: int
    workers: int
    process: subprocess.Popen[bytes]
    directory: Path
    stopped: bool = field(default=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "server.log"

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def log(self) -> str:
        """Everything the pool wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def ready_workers(self) -> int:
        return self.log().count(READY_MARKER)

    def worker_pids(self) -> list[int]:
        """The live workers that have loaded Django: the arbiter's children
        that said so in the log (a respawned worker appears once it is ready)."""
        ready = {int(pid) for pid in re.findall(rf"{READY_MARKER} (\d+)", self.log())}
        return [pid for pid in children(self.process.pid) if pid in ready]

    def answers(self, path: str = "/", timeout: float = 2.0) -> bool:
        """True if a GET of ``path`` gets any HTTP answer."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except OSError:
            return False
        finally:
            conn.close()
        return True

    def stop(self, *, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``grace`` seconds."""
        if self.stopped:
            return
        self.stopped = True
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)
        # The arbiter leads its own process group (start_new_session), so this
        # reaches workers left behind by an arbiter that died or hung.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=grace)

    def cleanup(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def children(parent: int) -> list[int]:
    """The pids of the live child processes of ``parent``, read from /proc."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _has_setting(name: str) -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == name for setting in KNOWN_SETTINGS)


def environment(database_name: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a pool's processes: the test project's settings on
    the database ``database_name``, with ``extra_env`` over it. Other
    processes given it (``manage.py`` commands) see what the pool sees."""
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "IDEMPOTENCY_DB_NAME_OVERRIDE": database_name,
            "PYTHONPATH": os.pathsep.join(
                [str(TESTPROJECT_DIR), *filter(None, [env.get("PYTHONPATH")])]
            ),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    return env


def start(
    database_name: str,
    *,
    workers: int = 4,
    threads: int = 8,
    startup_timeout: float = 60.0,
    ready_path: str = "/orders/",
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start ``testproject.wsgi:application`` under gunicorn on 127.0.0.1.

    ``database_name`` is the ``NAME`` the workers connect to (pass
    ``connection.settings_dict["NAME"]`` to share the test database). Return
    once every worker has loaded Django and ``ready_path`` answers; raise
    :class:`ServerError` with the pool's log if that takes longer than
    ``startup_timeout`` seconds or the pool exits.
    """
    host = "127.0.0.1"
    directory = Path(tempfile.mkdtemp(prefix="idempotency-gunicorn-"))
    config = directory / "gunicorn_conf.py"
    config.write_text(GUNICORN_CONFIG)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1024)
    port = listener.getsockname()[1]

    env = environment(database_name, extra_env)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "testproject.wsgi:application",
        "--config",
        str(config),
        "--bind",
        f"fd://{listener.fileno()}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--timeout",
        "120",
        "--graceful-timeout",
        "5",
        "--log-level",
        "info",
    ]
    if _has_setting("control_socket_disable"):
        # gunicorn 25.1+ opens a control socket at one fixed path per user by
        # default; pools started side by side would fight over it.
        command.append("--no-control-socket")
    with (directory / "server.log").open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=TESTPROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
            start_new_session=True,
        )
    listener.close()
    server = Server(host=host, port=port, workers=workers, process=process, directory=directory)

    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(
                    f"gunicorn exited with status {process.returncode} while starting:\n"
                    + server.log()
                )
            if server.ready_workers() >= workers and server.answers(ready_path):
                return server
            if time.monotonic() > deadline:
                raise ServerError(
                    f"gunicorn did not get {workers} workers ready and answering "
                    f"{ready_path} within {startup_timeout:g} s:\n" + server.log()
                )
            time.sleep(0.1)
    except BaseException:
        server.stop()
        server.cleanup()
        raise
