"""Stopping a child process: ask, give it time to finish, then make sure.

Orthanc, the BentoML imaging service, gateways and HTTP servers are all children of some
command or test; each one is asked to stop with a signal (SIGTERM unless the child treats
another as its graceful stop), given `grace` seconds, then killed and reaped, so no stop
leaves a zombie or a port held.
"""

from __future__ import annotations

import signal
import subprocess


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
