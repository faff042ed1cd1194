"""A small TCP fault proxy for the fault suite: sits between our processes and Valkey or S3 and breaks things.

Why not toxiproxy: its server is a Go binary no registry we use ships. This is the part of it the suite needs,
in threads, on loopback:

* ``cut()`` closes every live connection at once (a broken socket, as a crashed server or a dropped NAT
  entry looks to the client); new connections are still accepted.
* ``refuse()`` / ``accept()``: while refusing, new connections are closed as soon as they arrive (the server is
  "down"), live ones are cut.
* ``cut_after(upstream=N)`` / ``cut_after(downstream=N)``: the next connection that carries more than ``N``
  bytes in that direction (client to server: an upload; server to client: a download) is cut right there, once.
  ``tripped`` is set when that happened, so a test can tell the fault really hit.

Every counter is per proxy; ``close()`` stops the listener and cuts everything. Nothing here knows about Redis or
HTTP: a scenario picks where and when to break.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field

from tests.helpers.ports import free_port

LOOPBACK = "127.0.0.1"
CHUNK = 64 * 1024


@dataclass
class _Trip:
    """One pending "cut after N bytes" fault in one direction."""

    upstream: bool
    limit: int
    fired: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port``; see the module docstring for the faults."""

    def __init__(self, target_port: int, target_host: str = LOOPBACK, name: str = "proxy") -> None:
        self.name = name
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0  # accepted so far (a scenario can check its traffic really went through us)
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._refusing = False
        self._trip: _Trip | None = None
        self.tripped = threading.Event()
        self._listener = socket.create_server((LOOPBACK, self.port), reuse_port=False)
        self._listener.settimeout(0.2)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{name}", daemon=True)
        self._thread.start()

    # --- controls -------------------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def cut(self) -> None:
        """Close every live connection (both sides) now."""
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _close(sock)

    def refuse(self) -> None:
        """Act as if the server were down: cut what is live, close each new connection at once."""
        with self._lock:
            self._refusing = True
        self.cut()

    def accept(self) -> None:
        """Forward new connections again."""
        with self._lock:
            self._refusing = False

    def cut_after(self, *, upstream: int | None = None, downstream: int | None = None) -> threading.Event:
        """Cut the first connection that carries more than this many bytes one way; returns ``tripped``."""
        if (upstream is None) == (downstream is None):
            raise ValueError("name exactly one direction")
        self.tripped.clear()
        with self._lock:
            self._trip = _Trip(upstream is not None, upstream if upstream is not None else downstream or 0)
        return self.tripped

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        _close(self._listener)
        self.cut()

    # --- forwarding -----------------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
                self.connections += 1
            if refusing:
                _close(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        server.settimeout(None)
        with self._lock:
            self._live.update((client, server))
        pump = threading.Thread(target=self._pump, args=(server, client, False), daemon=True)
        pump.start()
        self._pump(client, server, True)
        pump.join(timeout=5)

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        carried = 0
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                carried += len(data)
                if self._should_trip(upstream, carried):
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._live.discard(sock)
                _close(sock)

    def _should_trip(self, upstream: bool, carried: int) -> bool:
        with self._lock:
            trip = self._trip
            if trip is None or trip.upstream != upstream or carried <= trip.limit:
                return False
            self._trip = None
        self.tripped.set()
        return True


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
