"""Network helpers shared by the listener and the two DICOM clients (``scu``, ``writeback``):
TLS contexts and TCP_NODELAY."""

from __future__ import annotations

import socket
import ssl

from pynetdicom import evt

from haidang.ground.settings import TLSSettings


def tls_context(tls: TLSSettings, server: bool = True) -> ssl.SSLContext:
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    ctx = ssl.create_default_context(purpose, cafile=str(tls.ca_file) if tls.ca_file else None)
    if tls.cert_file:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if server:
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    else:
        ctx.check_hostname = False  # DICOM peers are configured by address; the CA is checked
    return ctx


def set_nodelay(sock) -> None:
    """Without TCP_NODELAY every PDU waits on Nagle + delayed ACK (50-90 ms here)."""
    raw = getattr(sock, "socket", sock)
    if raw is not None:
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _nodelay(event) -> None:
    set_nodelay(event.assoc.dul.socket.socket)


# pynetdicom ``evt_handlers`` for a client association: TCP_NODELAY once connected
NODELAY_HANDLERS = [(evt.EVT_CONN_OPEN, _nodelay)]
