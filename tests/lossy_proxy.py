"""An HTTP proxy that loses and delays responses, for the tests of clients
that retry on their own (Stripe's SDK, urllib3's ``Retry``).

It listens on a loopback port of its own and forwards each request to a live
server, one request per connection. For each request it draws a fault:

- ``lose``: the server answers, and the client gets nothing: the connection
  closes without a byte, as when a network path fails after the server
  committed. The client can only retry;
- ``delay``: the server answers, and the answer is held for a while before it
  is sent. A client whose read timeout is shorter retries meanwhile;
- ``hold``: the request is held before it reaches the server, so that the
  client's retry may overtake it and the first copy arrives last.

Faults are bounded: at most ``per_key`` for one idempotency key (so that a
client with enough retries gets through), at most ``limit`` in all, and no
wait longer than ``max_delay`` seconds. The draws come from a seeded
``random.Random``; the threads that serve requests make their order vary.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

FAULTS = ("lose", "delay", "hold")

#: Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
)


class LossyProxy:
    """``LossyProxy(target_url, rate=0.3)``; ``proxy.url`` is its address.

    ``rate`` is the share of requests that get a fault; ``faults`` counts
    the faults injected by kind, ``requests`` the requests by key.
    """

    def __init__(
        self,
        target_url: str,
        *,
        rate: float = 0.3,
        per_key: int = 2,
        limit: int = 1000,
        max_delay: float = 1.0,
        seed: int = 0,
        key_header: str = "Idempotency-Key",
    ) -> None:
        target = urlsplit(target_url)
        assert target.hostname in ("127.0.0.1", "localhost"), "loopback only"
        self.target = (target.hostname, target.port or 80)
        self.rate = rate
        self.per_key = per_key
        self.limit = limit
        self.max_delay = max_delay
        self.key_header = key_header
        self.faults: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._faults_by_key: Counter[str] = Counter()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the draw ------------------------------------------------------------------

    def draw(self, key: str) -> tuple[str | None, float]:
        """The fault for the next request with ``key``, and its wait."""
        with self._lock:
            self.requests[key] += 1
            budget = sum(self.faults.values()) < self.limit
            if not (budget and key and self._faults_by_key[key] < self.per_key):
                return None, 0.0
            if self._random.random() >= self.rate:
                return None, 0.0
            fault = self._random.choice(FAULTS)
            self.faults[fault] += 1
            self._faults_by_key[key] += 1
            return fault, self._random.uniform(self.max_delay / 2, self.max_delay)

    # -- forwarding ----------------------------------------------------------------

    def forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Any:
        """Send the request to the server; its status, reason, headers and body."""
        connection = http.client.HTTPConnection(*self.target, timeout=30)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Connection", "close")
            connection.endheaders(body)
            response = connection.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            connection.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self) -> None:
                self.close_connection = True  # one request per connection
                super().handle_one_request()

            def relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = [
                    (name, value)
                    for name, value in self.headers.items()
                    if name.lower() not in HOP_BY_HOP
                ]
                fault, wait = proxy.draw(self.headers.get(proxy.key_header, ""))
                if fault == "hold":
                    time.sleep(wait)
                status, reason, response_headers, content = proxy.forward(
                    self.command, self.path, headers, body
                )
                if fault == "lose":
                    return  # the connection closes without a response
                if fault == "delay":
                    time.sleep(wait)
                try:
                    self.send_response_only(status, reason)
                    for name, value in response_headers:
                        if name.lower() not in HOP_BY_HOP | {"content-length"}:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(content)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass  # the client gave up waiting

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
