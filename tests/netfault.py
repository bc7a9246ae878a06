"""A TCP proxy that can stall and reset connections, for network fault tests.

A real network fault is not a clean close: a stalled link keeps every connection
open while nothing gets through, and it recovers by resetting them. Kafka clients
react to the two very differently (request timeouts, reconnects, coordinator
look-ups), so the fault tests put this proxy between the workers and the broker:
the broker advertises a second listener at the proxy's port
(``LocalKafka(proxied=...)``), so every connection a client makes — bootstrap
and the broker connections that metadata hands out — runs through it.

- `stall`: hold every byte, in both directions, on every connection, including
  connections opened while stalled; nothing is closed.
- `resume`: forward again (held bytes go out first, in order).
- `reset`: close every connection now with a TCP RST (held bytes are dropped, as a
  broken link drops them); new connections are accepted as before.

One thread serves all connections with a selector. Buffers are bounded
(``BUFFER_BYTES`` per direction): a full buffer stops reading from its source, so
TCP backpressure reaches the sender instead of memory growing. The control
methods are thread-safe and return once the loop has carried them out.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable

BUFFER_BYTES = 1 << 20  # held per direction and connection before reading stops
_CHUNK = 1 << 16


class _Pipe:
    """One proxied connection: the client's socket and ours to the broker."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.pending = {client: bytearray(), upstream: bytearray()}  # bytes to write to it

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class FaultProxy:
    """Forwards ``127.0.0.1:port`` to ``target`` until `close`; see the module docstring."""

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0  # connections accepted so far (a test can see clients reconnect)
        self.resets = 0  # connections closed by reset()
        self._stalled = False
        self._pipes: dict[socket.socket, _Pipe] = {}
        self._interest: dict[socket.socket, int] = {}  # selector events per socket
        self._commands: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}")
        self._thread.daemon = True
        self._thread.start()

    # -- control (any thread) ------------------------------------------------------
    def stall(self) -> None:
        """Hold all traffic; connections stay open."""
        self._call(lambda: setattr(self, "_stalled", True))

    def resume(self) -> None:
        """Forward traffic again."""
        self._call(lambda: setattr(self, "_stalled", False))

    def reset(self) -> None:
        """Close every connection with an RST; held bytes are dropped."""
        self._call(self._reset_all)

    @property
    def connections(self) -> int:
        """Connections open right now."""
        return len(self._pipes) // 2

    def close(self) -> None:
        """Reset every connection and stop listening."""
        if self._closed:
            return
        self._call(self._reset_all)
        self._closed = True
        self._wake_w.send(b"x")
        self._thread.join(10)
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    def _call(self, action: Callable[[], None], timeout: float = 10.0) -> None:
        if self._closed:
            raise RuntimeError("proxy is closed")
        done = threading.Event()
        self._commands.put((action, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"fault proxy did not carry out a command within {timeout}s")

    # -- the loop (its own thread) -------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._update_interest()
            for key, mask in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._run_commands()
                elif sock is self._listener:
                    self._accept()
                elif sock in self._pipes:
                    if mask & selectors.EVENT_WRITE:
                        self._write(sock)
                    if mask & selectors.EVENT_READ and sock in self._pipes:
                        self._read(sock)

    def _run_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            action()
            done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _abort(client)  # the broker is down: the client sees a refused/reset connection
            return
        self.accepted += 1
        pipe = _Pipe(client, upstream)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipes[sock] = pipe

    def _update_interest(self) -> None:
        """Read while the peer-bound buffer has room (also while stalled: bytes are taken
        in and held); write what is held unless stalled. A socket with neither is left
        out of the selector until it has one again."""
        for sock, pipe in list(self._pipes.items()):
            events = 0
            if len(pipe.pending[pipe.peer(sock)]) < BUFFER_BYTES:
                events |= selectors.EVENT_READ
            if pipe.pending[sock] and not self._stalled:
                events |= selectors.EVENT_WRITE
            have = self._interest.get(sock, 0)
            if events == have:
                continue
            if not have:
                self._selector.register(sock, events)
            elif not events:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, events)
            self._interest[sock] = events

    def _read(self, sock: socket.socket) -> None:
        pipe = self._pipes[sock]
        buffer = pipe.pending[pipe.peer(sock)]
        if len(buffer) >= BUFFER_BYTES:
            return
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(pipe)
            return
        buffer += data

    def _write(self, sock: socket.socket) -> None:
        pipe = self._pipes[sock]
        buffer = pipe.pending[sock]
        if self._stalled or not buffer:
            return
        try:
            sent = sock.send(buffer)
        except BlockingIOError:
            return
        except OSError:
            self._drop(pipe)
            return
        del buffer[:sent]

    def _drop(self, pipe: _Pipe) -> None:
        for sock in (pipe.client, pipe.upstream):
            self._pipes.pop(sock, None)
            if self._interest.pop(sock, 0):
                self._selector.unregister(sock)
            _abort(sock)

    def _reset_all(self) -> None:
        pipes = {id(p): p for p in self._pipes.values()}
        for pipe in pipes.values():
            self._drop(pipe)
        self.resets += len(pipes)


def _abort(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a broken link looks to the other side."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
