"""A lean receive path for the gateway's associations: wake on data, never poll.

pynetdicom's two threads per association poll: the association reactor sleeps 1 ms
between looks at its DIMSE queue, and the DUL sleeps between looks at its socket
and outgoing queue. On a busy 2-core host each of those sleeps lasts 1-3 ms, and a
C-STORE meets several of them: measured here, most of a ~10 ms round trip was sleep.

This module keeps pynetdicom's state machine and encoders and changes only the
waiting: the reactor blocks on its DIMSE queue, and the DUL blocks in ``select`` on
its socket plus a wake-up pipe written whenever a PDU is queued for sending. Only
associations accepted by :class:`GatewayServer` are affected. Written against
pynetdicom 3.0 (pinned ``<4`` in pyproject).
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time as _time
import types

import pynetdicom.dul as _dul
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

SAFETY_WAKE_S = 0.01  # timers (ARTIM, idle) and kill flags are still noticed this often


def _sleep(delay: float) -> None:
    """pynetdicom.dul's ``time.sleep``: fast DUL threads wait on their socket instead."""
    wait = getattr(threading.current_thread(), "_haidang_wait", None)
    if wait is None:
        _time.sleep(delay)
    else:
        wait(delay)


# pynetdicom.dul only uses time.sleep and time.time-like helpers from ``time``; keep them all
_dul.time = types.SimpleNamespace(**{k: getattr(_time, k) for k in dir(_time)
                                     if not k.startswith("__")})
_dul.time.sleep = _sleep


class _WakingQueue(queue.Queue):
    """The DUL's outgoing queue: putting a primitive also wakes the DUL thread."""

    def __init__(self, wake_fd: int):
        super().__init__()
        self._wake_fd = wake_fd

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        try:
            os.write(self._wake_fd, b"x")
        except OSError:
            pass  # association over: nobody waits


def _make_waiter(dul, read_fd: int):
    def wait(delay: float) -> None:
        sock = getattr(dul.socket, "socket", None) if dul.socket else None
        fds = [read_fd]
        if sock is not None:
            if getattr(sock, "pending", None) and sock.pending():  # TLS bytes already buffered
                return
            fds.append(sock)
        try:
            ready, _, _ = select.select(fds, [], [], SAFETY_WAKE_S)
        except (OSError, ValueError):
            _time.sleep(delay)
            return
        if read_fd in ready:
            try:
                os.read(read_fd, 4096)
            except OSError:
                pass

    return wait


class FastAssociation(Association):
    """An acceptor association whose reactor blocks on its DIMSE queue."""

    def _run_reactor(self) -> None:
        self._is_paused = False
        while not self._kill:
            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=SAFETY_WAKE_S / 2)
            except queue.Empty:
                context_id, msg = None, None

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            if msg:
                self._serve_request(msg, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                self.abort()
                self.kill()
                return

    def run_reactor(self) -> None:
        try:
            super().run_reactor()
        finally:
            pipe = getattr(self, "_haidang_pipe", None)
            if pipe:
                self.dul._haidang_wait = None
                self.dul.join(timeout=1)
                for fd in pipe:
                    try:
                        os.close(fd)
                    except OSError:
                        pass


class FastRequestHandler(RequestHandler):
    def _create_association(self):
        assoc = super()._create_association()
        assoc.__class__ = FastAssociation
        read_fd, write_fd = os.pipe()
        assoc._haidang_pipe = (read_fd, write_fd)
        dul = assoc.dul
        dul.to_provider_queue = _WakingQueue(write_fd)
        dul._haidang_wait = _make_waiter(dul, read_fd)
        return assoc


class GatewayServer(ThreadedAssociationServer):
    """The gateway's listener: lean associations, optionally sharing its port."""

    reuse_port = False

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("request_handler", FastRequestHandler)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class ReusePortGatewayServer(GatewayServer):
    reuse_port = True
