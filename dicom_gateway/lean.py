"""The lean listener: one thread per association, reading PDUs straight off the socket.

pynetdicom runs two threads per association and builds pydicom objects for every
command and response; on a small, busy host that costs several ms of CPU per
C-STORE. The gateway's listener only ever answers C-ECHO and C-STORE, so this module
speaks just that much of the DICOM upper layer (PS3.8) itself, reusing pynetdicom's
encoders for association negotiation (A-ASSOCIATE-RQ/AC, presentation contexts), and
hands each data set, as received, to :meth:`StorageSCP.store`.

Chosen with ``gateway.receive_path = "lean"`` (default); ``"pynetdicom"`` uses
pynetdicom's own association server with the same handlers.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context, negotiate_unrestricted

from dicom_gateway import metrics

log = logging.getLogger("haidang.gateway.lean")

VERIFICATION = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1471.1"  # Haidang gateway
IMPLEMENTATION_VERSION = "HAIDANG_01"
MAX_PDU_RECEIVE = 1 << 20  # we accept P-DATA PDUs up to 1 MiB
MAX_ASSOCIATIONS = 64  # at once per listener process; more are rejected as transient
C_STORE_RQ, C_ECHO_RQ = 0x0001, 0x0030
C_STORE_RSP, C_ECHO_RSP = 0x8001, 0x8030
INITIAL_BUFFER = 1 << 20  # per association; grows for larger data sets
MAX_KEPT_BUFFER = 16 << 20  # a buffer grown past this is dropped after its instance
_U32 = struct.Struct(">I").unpack_from


class PeerGone(Exception):
    """The connection closed or timed out."""


def _fill(sock, view: memoryview) -> None:
    """Fill ``view`` from the socket."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerGone("connection closed by peer")
        got += k


def _recv_exact(sock, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerGone("connection closed by peer")
        got += k
    return buf


def _read_pdu(sock) -> tuple[int, bytearray]:
    head = _recv_exact(sock, 6)
    pdu_type, length = head[0], struct.unpack(">I", head[2:6])[0]
    if length > MAX_PDU_RECEIVE + 6 and pdu_type == 0x04:
        raise ValueError(f"P-DATA PDU of {length} bytes exceeds our maximum {MAX_PDU_RECEIVE}")
    return pdu_type, _recv_exact(sock, length) if length else bytearray()


def _parse_command(raw: bytes) -> dict[int, bytes]:
    """A command set (implicit VR little endian, group 0000) as {element: value}."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(raw)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", raw, pos)
        pos += 8
        if group != 0x0000:
            raise ValueError(f"unexpected group {group:04X} in a command set")
        out[element] = bytes(raw[pos:pos + length])
        pos += length
    return out


def _uid(value: bytes | None) -> str:
    return (value or b"").rstrip(b"\x00 ").decode("ascii", "replace")


def _us(value: bytes | None) -> int:
    return struct.unpack("<H", value[:2])[0] if value else 0


def _elem(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, element, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def response(context_id: int, command_field: int, message_id: int, sop_class: str,
             status: int, sop_instance: str | None = None) -> bytes:
    """A P-DATA-TF PDU carrying one C-STORE-RSP or C-ECHO-RSP command set."""
    body = _elem(0x0002, _uid_value(sop_class)) + _elem(0x0100, struct.pack("<H", command_field))
    body += _elem(0x0120, struct.pack("<H", message_id))
    body += _elem(0x0800, struct.pack("<H", 0x0101))  # no data set follows
    body += _elem(0x0900, struct.pack("<H", status))
    if sop_instance:
        body += _elem(0x1000, _uid_value(sop_instance))
    command = _elem(0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def _abort(sock, reason: int = 0x00) -> None:
    try:
        sock.sendall(struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, reason))
    except OSError:
        pass


class Association:
    """One accepted connection: negotiate, then serve C-ECHO and C-STORE until release."""

    def __init__(self, scp, sock, address):
        self.scp = scp
        self.sock = sock
        self.host = address[0]
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self.spare = None  # a temporary file made ahead for the next instance (Spool.spare)

    def run(self) -> None:
        try:
            if self._negotiate():
                self._serve()
        except PeerGone:
            pass
        except (OSError, TimeoutError) as exc:
            log.info("association with %s from %s ended: %s", self.calling_ae or "?", self.host,
                     exc)
        except Exception as exc:  # noqa: BLE001 - a broken peer must not take the listener down
            log.warning("association with %s from %s aborted: %s: %s", self.calling_ae or "?",
                        self.host, type(exc).__name__, exc)
            _abort(self.sock, 0x02)
        finally:
            if self.spare is not None:
                self.spare.discard()
                self.spare = None
            try:
                self.sock.close()
            except OSError:
                pass

    def _negotiate(self) -> bool:
        pdu_type, data = _read_pdu(self.sock)
        if pdu_type != 0x01:
            _abort(self.sock, 0x01)
            return False
        rq = A_ASSOCIATE_RQ()
        rq.decode(bytes(struct.pack(">BBI", 0x01, 0, len(data)) + data))
        primitive = rq.to_primitive()
        self.calling_ae = str(primitive.calling_ae_title).strip()
        if not self.scp.is_allowed(self.calling_ae, self.host):
            log.warning("association rejected: calling AE %s from %s is not in "
                        "gateway.allowed_sources", self.calling_ae, self.host)
            metrics.INSTANCES.labels("association_rejected").inc()
            # A-ASSOCIATE-RJ: rejected permanent, service user, calling AE title not recognised
            self.sock.sendall(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x01, 0x01, 0x03))
            return False
        results, _roles = negotiate_unrestricted(
            primitive.presentation_context_definition_list, [build_context(VERIFICATION)], {})
        for cx in results:
            if cx.result == 0x00:
                self.contexts[cx.context_id] = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title = primitive.calling_ae_title
        ac.called_ae_title = primitive.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU_RECEIVE
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_UID
        impl_version = ImplementationVersionNameNotification()
        impl_version.implementation_version_name = IMPLEMENTATION_VERSION
        ac.user_information = [max_length, impl_uid, impl_version]
        pdu = A_ASSOCIATE_AC()
        pdu.from_primitive(ac)
        self.sock.sendall(pdu.encode())
        return True

    def _serve(self) -> None:
        """P-DATA PDUs are read item by item: data set fragments go from the socket straight
        into one reused buffer (no copy per fragment, no join), and the data set is handed
        to the SCP as a view of that buffer."""
        sock = self.sock
        head = bytearray(6)
        head_view = memoryview(head)
        command = bytearray()
        buf = bytearray(INITIAL_BUFFER)
        used = 0  # bytes of the current data set in buf
        cmd: dict[int, bytes] | None = None
        while True:
            _fill(sock, head_view)
            pdu_type, remaining = head[0], _U32(head, 2)[0]
            if pdu_type != 0x04:
                if remaining > 65536:
                    raise ValueError(f"PDU of type {pdu_type:#04x} claims {remaining} bytes")
                _recv_exact(sock, remaining)
                if pdu_type == 0x05:  # A-RELEASE-RQ
                    sock.sendall(struct.pack(">BBII", 0x06, 0, 4, 0))
                    return
                if pdu_type == 0x07:  # A-ABORT
                    return
                _abort(sock, 0x02)  # unexpected PDU
                return
            if remaining > MAX_PDU_RECEIVE + 6:
                raise ValueError(f"P-DATA PDU of {remaining} bytes exceeds our maximum "
                                 f"{MAX_PDU_RECEIVE}")
            while remaining:
                if remaining < 6:
                    raise ValueError("P-DATA PDU ends inside a presentation data value header")
                _fill(sock, head_view)
                length, context_id, header = _U32(head, 0)[0], head[4], head[5]
                if length < 2 or length + 4 > remaining:
                    raise ValueError(f"presentation data value of {length} bytes does not fit "
                                     f"its PDU ({remaining} bytes left)")
                remaining -= 4 + length
                size = length - 2
                if header & 0x01:  # command fragment
                    command += _recv_exact(sock, size)
                    if header & 0x02:
                        cmd = _parse_command(command)
                        command = bytearray()
                        if _us(cmd.get(0x0800)) == 0x0101:  # no data set: answer now
                            self._answer(context_id, cmd, None)
                            cmd = None
                    continue
                if used + size > len(buf):  # a new buffer: views of the old one stay valid
                    bigger = bytearray(max(2 * len(buf), used + size))
                    bigger[:used] = memoryview(buf)[:used]
                    buf = bigger
                _fill(sock, memoryview(buf)[used:used + size])
                used += size
                if header & 0x02:
                    if cmd is None:
                        raise ValueError("data set without a command")
                    self._answer(context_id, cmd, memoryview(buf)[:used])
                    used, cmd = 0, None
                    if len(buf) > MAX_KEPT_BUFFER:
                        buf = bytearray(INITIAL_BUFFER)

    def _answer(self, context_id: int, cmd: dict[int, bytes], stream: bytes | None) -> None:
        field = _us(cmd.get(0x0100))
        message_id = _us(cmd.get(0x0110))
        sop_class = _uid(cmd.get(0x0002))
        if context_id not in self.contexts:
            raise ValueError(f"message on presentation context {context_id}, not accepted")
        if field == C_ECHO_RQ:
            self.sock.sendall(response(context_id, C_ECHO_RSP, message_id, sop_class, 0x0000))
        elif field == C_STORE_RQ and stream is not None:
            sop_instance = _uid(cmd.get(0x1000))
            transfer_syntax = self.contexts[context_id][1]
            spare, self.spare = self.spare, None
            try:
                status = self.scp.store(self.calling_ae, sop_class, sop_instance,
                                        transfer_syntax, stream, spare=spare)
            finally:
                if spare is not None:
                    spare.discard()  # unused (duplicate, refused); a used one is gone already
            self.sock.sendall(response(context_id, C_STORE_RSP, message_id, sop_class, status,
                                       sop_instance))
            # while the sender prepares its next instance: the next temporary file
            spool = getattr(self.scp, "spool", None)
            if spool is not None:
                self.spare = spool.spare()
        else:
            raise ValueError(f"unsupported DIMSE command 0x{field:04X} (only C-ECHO, C-STORE)")


class LeanServer:
    """Accepts connections and runs each association on its own thread."""

    def __init__(self, scp, host: str, port: int, ssl_context=None, reuse_port: bool = False,
                 network_timeout: float = 60.0):
        self.scp = scp
        self.ssl_context = ssl_context
        self.network_timeout = network_timeout
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind((host, port))
        self.socket.listen(128)
        self.server_address = self.socket.getsockname()
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_ASSOCIATIONS)
        self._thread = threading.Thread(target=self._accept_loop, name="haidang-listener",
                                        daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, address = self.socket.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            threading.Thread(target=self._handle, args=(conn, address), daemon=True,
                             name=f"haidang-assoc-{address[0]}:{address[1]}").start()

    def _handle(self, conn, address) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.network_timeout)
        if not self._slots.acquire(blocking=False):
            log.warning("association from %s refused: %s associations already open",
                        address[0], MAX_ASSOCIATIONS)
            try:  # A-ASSOCIATE-RJ: transient, service provider (presentation), local limit
                _read_pdu(conn)
                conn.sendall(struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x02, 0x03, 0x02))
            except (OSError, PeerGone, ValueError):
                pass
            conn.close()
            return
        try:
            self._serve_connection(conn, address)
        finally:
            self._slots.release()

    def _serve_connection(self, conn, address) -> None:
        if self.ssl_context is not None:
            try:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", address[0], exc)
                conn.close()
                return
        Association(self.scp, conn, address).run()

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        self._thread.join(timeout=5)
