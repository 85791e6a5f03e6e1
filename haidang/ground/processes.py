"""Processes: stopping a child, children that die with their parent, one owner per work.

Orthanc, the BentoML imaging service, gateways and HTTP servers are all children of some
command or test; each one is asked to stop with a signal (SIGTERM unless the child treats
another as its graceful stop), given `grace` seconds, then killed and reaped, so no stop
leaves a zombie or a port held. A child started with `die_with_parent` as its `preexec_fn`
is sent SIGTERM by the kernel when its parent dies, even by SIGKILL (Linux
PR_SET_PDEATHSIG); `stop_on_signals` catches SIGTERM/SIGINT so the command unwinds through
its `finally` blocks (which stop the children) before the process goes.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from haidang.ground.settings import SettingsError

PR_SET_PDEATHSIG = 1


def stop_process(proc: subprocess.Popen, grace: float = 15.0,
                 sig: int = signal.SIGTERM) -> int:
    """Stop `proc` (if still running) and return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def die_with_parent() -> None:
    """`preexec_fn` for a child: the kernel sends it SIGTERM when this process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class Stopped(SystemExit):
    """SIGTERM or SIGINT arrived: unwind (running `finally` blocks), then exit 0, as a stop
    that was asked for and done (a service manager reads anything else as a failure)."""

    def __init__(self, signum: int):
        super().__init__(0)
        self.signum = signum


class StopRequest:
    """SIGTERM or SIGINT received: `event` is set; within `raising()` `Stopped` is raised.

    Raising from a signal handler at an arbitrary point (inside a thread's start, a lock, a
    database call) can leave a lock held and hang the stop, so it is done only where the
    main thread waits on a server that has let go of its own handlers: uvicorn restores
    the handlers it found and re-raises the signal it caught after its graceful shutdown.
    Elsewhere the command checks `event` (or waits on it)."""

    def __init__(self):
        self.event = threading.Event()
        self.signum = signal.SIGTERM
        self._raise = False

    def handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signum = signum
        self.event.set()
        if self._raise:
            raise Stopped(signum)

    def wait(self) -> None:
        """Block the main thread until a stop is asked for.

        Never a bare ``event.wait()``: the kernel may deliver the signal to another thread
        (the listener in ``accept``), and then the main thread, asleep on a lock, never runs
        the Python handler that would set the event. Waking every half second lets it."""
        while not self.event.wait(0.5):
            pass

    @contextmanager
    def raising(self):
        if self.event.is_set():
            raise Stopped(self.signum)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False


@contextmanager
def stop_on_signals():
    """Catch SIGTERM and SIGINT for the block; yields the `StopRequest` they set.

    Without this, uvicorn's re-raised signal killed the command where it stood and its
    `finally` (which stops the imaging child) never ran."""
    request = StopRequest()
    previous = {s: signal.signal(s, request.handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class WorkOwned(SettingsError):
    """Another live process owns this spool and database."""


class OwnerLock:
    """An exclusive lock (flock) on a file naming its owner's PID and host.

    The kernel drops the lock when its owner dies, however it dies, so a crashed gateway
    never blocks the next start; a live one always does."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, path: Path, what: str) -> OwnerLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 300).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise WorkOwned(
                f"{what} are in use by {owner} (lock file {path}); stop that process first, "
                "or give this one its own gateway.spool_dir and gateway.database_url") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"PID {os.getpid()} on host {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
