"""Several uvicorn workers behind one port, with connections dealt to them in turn.

With one listening socket shared by the workers (uvicorn's `--workers`), whichever worker
wakes first accepts every connection waiting in the queue. An HIS opens its keep-alive pool
at once, so one worker often gets most of it: measured here with 32 connections from `wrk`
and 2 workers, splits of 31/1, 22/10 and 16/16 in five tries. The busier worker then sets the
tail latency for everyone, and by chance. Per-worker SO_REUSEPORT sockets spread by hash,
still by chance.

So the parent process owns the listener, accepts, and hands each connection (its file
descriptor, over a Unix socket pair) to the next worker in turn, as Node's cluster module
does by default. A worker is an ordinary `uvicorn.Server` without its own listener; it adopts
each connection it is handed. The parent restarts a worker that dies, and stops them all on
SIGTERM/SIGINT. The hand-off costs one `sendmsg` per new connection, not per request.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import selectors
import signal
import socket
import time

import uvicorn
import uvicorn.config

log = logging.getLogger("haidang.serving.http")

RESTART_PAUSE_S = 1.0  # a worker that dies at start is restarted at most once a second


class HandedServer(uvicorn.Server):
    """A uvicorn server that serves the connections it is handed instead of a listener."""

    def __init__(self, config: uvicorn.Config, channel: socket.socket):
        super().__init__(config)
        self.channel = channel

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=[])  # the app and its lifespan, no listener
        loop = asyncio.get_running_loop()
        loop.add_reader(self.channel.fileno(), self._adopt, loop)

    async def shutdown(self, sockets=None) -> None:
        asyncio.get_running_loop().remove_reader(self.channel.fileno())
        await super().shutdown(sockets)

    def _protocol(self) -> asyncio.Protocol:
        # What uvicorn's own listener builds for each connection (Server.startup).
        return self.config.http_protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(self.channel, 16, 16)
        except (BlockingIOError, InterruptedError):
            return
        if not fds:  # the parent closed its end: it is going away
            loop.remove_reader(self.channel.fileno())
            self.should_exit = True
            return
        for fd in fds:
            conn = socket.socket(fileno=fd)
            conn.setblocking(False)
            loop.create_task(loop.connect_accepted_socket(self._protocol, conn))


def _worker(config: uvicorn.Config, channel: socket.socket) -> None:
    from haidang.ground.logs import configure

    configure()  # as the parent command was told (text or JSON, level), via the environment
    # What uvicorn's own workers get from Config.configure_logging (a spawned child has the
    # pickled Config, not its set-up), without its text handlers: its loggers propagate to
    # the root logger above. Without this every request wrote an access line to stderr.
    level = uvicorn.config.LOG_LEVELS.get(str(config.log_level).lower(), logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).setLevel(level)
    if not config.access_log:
        access = logging.getLogger("uvicorn.access")
        access.handlers, access.propagate = [], False
    channel.setblocking(False)
    HandedServer(config, channel).run()


class HandOff:
    """The parent: owns the listener, keeps `workers` processes, deals them connections."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket, workers: int):
        self.config = config
        self.listener = listener
        self.count = workers
        self.context = multiprocessing.get_context("spawn")  # no forked state in workers
        self.workers: list[tuple[multiprocessing.Process, socket.socket]] = []
        self.started: dict[int, float] = {}  # slot -> when its worker was started
        self.next = 0
        self.stopping = False

    def _start(self, slot: int) -> tuple[multiprocessing.Process, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = self.context.Process(target=_worker, args=(self.config, theirs),
                                    name=f"haidang-http-{slot}", daemon=False)
        proc.start()
        self.started[slot] = time.monotonic()
        theirs.close()
        return proc, ours

    def _deal(self, conn: socket.socket) -> None:
        """Hand `conn` to the next live worker; close it if none will take it."""
        for _ in range(self.count):
            slot = self.next
            self.next = (self.next + 1) % self.count
            proc, channel = self.workers[slot]
            if not proc.is_alive():
                continue
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
                return
            except OSError:
                continue  # that worker is going; try the next
        log.error("no HTTP worker alive to take a connection; closing it")

    def _check_workers(self) -> None:
        """Restart dead workers, without holding up the accept loop for the live ones."""
        now = time.monotonic()
        for slot, (proc, channel) in enumerate(self.workers):
            if self.stopping or proc.is_alive() or now - self.started[slot] < RESTART_PAUSE_S:
                continue
            log.warning("HTTP worker %d exited with %s; restarting it", slot, proc.exitcode)
            channel.close()
            self.workers[slot] = self._start(slot)

    def run(self) -> None:
        self.listener.listen(self.config.backlog)
        self.listener.setblocking(False)
        self.workers = [self._start(slot) for slot in range(self.count)]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        try:
            while not self.stopping:
                for _ in selector.select(timeout=0.5):
                    self._accept_all()
                self._check_workers()
        finally:
            selector.close()
            self._shutdown()

    def _accept_all(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving what is open
                log.error("accept failed: %s", exc)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._deal(conn)
            conn.close()  # the worker holds its own descriptor now

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _shutdown(self) -> None:
        self.listener.close()
        for proc, _ in self.workers:
            if proc.is_alive() and proc.pid:
                os.kill(proc.pid, signal.SIGTERM)
        for proc, channel in self.workers:
            proc.join(timeout=self.config.timeout_graceful_shutdown or 30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            channel.close()
