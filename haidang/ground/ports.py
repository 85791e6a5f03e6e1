"""The ports a command will listen on: each named by the setting or flag that chose it.

Checked before anything starts, so a port in use gives one line naming the port and its
setting instead of an ``OSError: [Errno 98]`` traceback from deep inside a server.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from haidang.ground.settings import SettingsError


class PortInUse(SettingsError):
    """A port a command needs is taken."""


@dataclass(frozen=True)
class Port:
    setting: str  # e.g. "gateway.port" or "--port"
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.setting}={self.port}"


def in_use(port: Port) -> bool:
    """Whether binding (as the servers do, with SO_REUSEADDR) would fail."""
    if port.port == 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((port.host, port.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def ensure_free(ports: list[Port]) -> None:
    """Raise PortInUse (one line) for the first port already taken."""
    for port in ports:
        if in_use(port):
            raise PortInUse(f"port {port.port} on {port.host} (set by {port.setting}) is "
                            "already in use: stop what listens there (`ss -ltnp`) or choose "
                            f"another port with {port.setting}")
