"""The gateway's DICOM listener: one thread per association, reading PDUs off the socket.

pynetdicom's association server runs two threads per association and builds pydicom
objects for every command and response; on a small, busy host that costs several ms of
CPU per C-STORE. The gateway only ever answers C-ECHO and C-STORE, so this module runs
the DICOM upper layer (PS3.8) for just that much. Every PDU it sends is encoded by
pynetdicom's PDU classes (``pynetdicom.pdu``, from ``pdu_primitives``); so is the
A-ASSOCIATE-RQ it reads, and the presentation contexts are negotiated by pynetdicom.
P-DATA-TF PDUs alone are read item by item, so that data set fragments go from the
socket straight into one buffer, and each data set is handed, as received, to
:meth:`StorageSCP.store`.

Stopping (:meth:`LeanServer.shutdown`): the listening socket closes first; an instance
being received may finish within the grace period and get its answer; then every
association still open is aborted (A-ABORT). An instance cut off is never answered, so
its sender knows to send it again; nothing half-received reaches the spool.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

from pynetdicom.pdu import (
    A_ABORT_RQ,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_ASSOCIATE_RQ,
    A_RELEASE_RP,
    P_DATA_TF,
)
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    A_P_ABORT,
    A_RELEASE,
    P_DATA,
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


def _encode(pdu_class, primitive) -> bytes:
    pdu = pdu_class()
    pdu.from_primitive(primitive)
    return pdu.encode()


def response(context_id: int, command_field: int, message_id: int, sop_class: str,
             status: int, sop_instance: str | None = None) -> bytes:
    """A P-DATA-TF PDU carrying one C-STORE-RSP or C-ECHO-RSP command set.

    The command set (group 0000, implicit VR little endian) is packed here: building it
    through pydicom would cost more than the rest of the answer."""
    body = _elem(0x0002, _uid_value(sop_class)) + _elem(0x0100, struct.pack("<H", command_field))
    body += _elem(0x0120, struct.pack("<H", message_id))
    body += _elem(0x0800, struct.pack("<H", 0x0101))  # no data set follows
    body += _elem(0x0900, struct.pack("<H", status))
    if sop_instance:
        body += _elem(0x1000, _uid_value(sop_instance))
    command = _elem(0x0000, struct.pack("<I", len(body))) + body
    data = P_DATA()
    data.presentation_data_value_list = [[context_id, b"\x03" + command]]  # last command fragment
    return _encode(P_DATA_TF, data)


def reject(result: int, source: int, diagnostic: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU (PS3.8 9.3.4: result 1 permanent, 2 transient)."""
    primitive = A_ASSOCIATE()
    primitive.result, primitive.result_source, primitive.diagnostic = result, source, diagnostic
    return _encode(A_ASSOCIATE_RJ, primitive)


def abort(reason: int = 0x00) -> bytes:
    """An A-ABORT PDU from the service provider (PS3.8 9.3.8) with ``reason``."""
    primitive = A_P_ABORT()
    primitive.provider_reason = reason
    return _encode(A_ABORT_RQ, primitive)


RELEASE_RP = _encode(A_RELEASE_RP, A_RELEASE())
UNEXPECTED_PDU = 0x02  # A-ABORT reason: unexpected PDU


def _send_abort(sock, reason: int = 0x00) -> None:
    try:
        sock.sendall(abort(reason))
    except OSError:
        pass


class Association:
    """One accepted connection: negotiate, then serve C-ECHO and C-STORE until release."""

    def __init__(self, server, sock, address):
        self.scp = server.scp
        self.server = server
        self.sock = sock
        self.host = address[0]
        self.calling_ae = ""
        self.contexts: dict[int, tuple[str, str]] = {}  # id -> (abstract syntax, transfer syntax)
        self.spare = None  # a temporary file made ahead for the next instance (Spool.spare)
        self.idle = True  # between messages: may be aborted at once when the listener stops
        self._send_lock = threading.Lock()

    def send(self, pdu: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(pdu)

    def cut(self) -> None:
        """Abort from another thread (the listener stops): A-ABORT, then close the socket."""
        try:
            with self._send_lock:
                self.sock.sendall(abort(0x00))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> None:
        try:
            if self._negotiate():
                self._serve()
        except PeerGone:
            pass
        except (OSError, TimeoutError) as exc:
            if not self.server.stopping:
                log.info("association with %s from %s ended: %s", self.calling_ae or "?",
                         self.host, exc)
        except Exception as exc:  # noqa: BLE001 - a broken peer must not take the listener down
            log.warning("association with %s from %s aborted: %s: %s", self.calling_ae or "?",
                        self.host, type(exc).__name__, exc)
            _send_abort(self.sock, UNEXPECTED_PDU)
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
            _send_abort(self.sock, UNEXPECTED_PDU)
            return False
        rq = A_ASSOCIATE_RQ()
        rq.decode(bytes(struct.pack(">BBI", 0x01, 0, len(data)) + data))
        primitive = rq.to_primitive()
        self.calling_ae = str(primitive.calling_ae_title).strip()
        if not self.scp.is_allowed(self.calling_ae, self.host):
            log.warning("association rejected: calling AE %s from %s is not in "
                        "gateway.allowed_sources", self.calling_ae, self.host)
            metrics.INSTANCES.labels("association_rejected").inc()
            # rejected permanent, service user, calling AE title not recognised
            self.send(reject(0x01, 0x01, 0x03))
            return False
        results, _roles = negotiate_unrestricted(
            primitive.presentation_context_definition_list, [build_context(VERIFICATION)], {})
        for cx in results:
            if cx.result == 0x00:
                self.contexts[cx.context_id] = (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        if not self.contexts:  # accepted, each context refused with its reason (PS3.8 7.1.1.13)
            log.warning("association from %s at %s: no presentation context acceptable "
                        "(only Verification and storage SOP classes are); proposed %s",
                        self.calling_ae, self.host,
                        ", ".join(sorted({str(cx.abstract_syntax) for cx in results})))
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
        self.send(_encode(A_ASSOCIATE_AC, ac))
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
            self.idle = cmd is None and not used and not command
            if self.idle and self.server.stopping:  # the last instance was answered: stop here
                self.cut()
                return
            _fill(sock, head_view)
            self.idle = False
            pdu_type, remaining = head[0], _U32(head, 2)[0]
            if pdu_type != 0x04:
                if remaining > 65536:
                    raise ValueError(f"PDU of type {pdu_type:#04x} claims {remaining} bytes")
                _recv_exact(sock, remaining)
                if pdu_type == 0x05:  # A-RELEASE-RQ
                    self.send(RELEASE_RP)
                    return
                if pdu_type == 0x07:  # A-ABORT: whatever was being received is dropped
                    if not self.idle:
                        log.info("association with %s from %s aborted by the peer during a "
                                 "transfer; the instance was not stored", self.calling_ae,
                                 self.host)
                    return
                _send_abort(sock, UNEXPECTED_PDU)
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
            self.send(response(context_id, C_ECHO_RSP, message_id, sop_class, 0x0000))
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
            self.send(response(context_id, C_STORE_RSP, message_id, sop_class, status,
                               sop_instance))
            # while the sender prepares its next instance: the next temporary file
            spool = getattr(self.scp, "spool", None)
            if spool is not None and not self.server.stopping:
                self.spare = spool.spare()
        else:
            raise ValueError(f"unsupported DIMSE command 0x{field:04X} (only C-ECHO, C-STORE)")


class LeanServer:
    """Accepts connections and runs each association on its own thread."""

    def __init__(self, scp, host: str, port: int, ssl_context=None, reuse_port: bool = False,
                 network_timeout: float = 60.0, max_associations: int = 64):
        self.scp = scp
        self.ssl_context = ssl_context
        self.network_timeout = network_timeout
        self.max_associations = max_associations
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.socket.listen(128)
        self.server_address = self.socket.getsockname()
        self.stopping = False
        self._open: set[Association] = set()
        self._open_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_associations)
        self._thread = threading.Thread(target=self._accept_loop, name="haidang-listener",
                                        daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self.stopping:
            try:
                conn, address = self.socket.accept()
            except OSError:
                if self.stopping:
                    return
                continue
            threading.Thread(target=self._handle, args=(conn, address), daemon=True,
                             name=f"haidang-assoc-{address[0]}:{address[1]}").start()

    def _handle(self, conn, address) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(self.network_timeout)
        if self.stopping or not self._slots.acquire(blocking=False):
            if not self.stopping:
                log.warning("association from %s refused: %s associations already open "
                            "(gateway.max_associations)", address[0], self.max_associations)
            try:  # rejected transient, service provider (presentation), local limit exceeded
                _read_pdu(conn)
                conn.sendall(reject(0x02, 0x03, 0x02))
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
        assoc = Association(self, conn, address)
        with self._open_lock:
            self._open.add(assoc)
        try:
            assoc.run()
        finally:
            with self._open_lock:
                self._open.discard(assoc)

    def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting; give instances being received ``grace`` seconds to be stored and
        answered; then abort every association still open."""
        self.stopping = True
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()
        self._thread.join(timeout=5)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._open_lock:
                busy = [a for a in self._open if not a.idle]
            if not busy:
                break
            time.sleep(0.05)
        with self._open_lock:
            still_open = list(self._open)
        for assoc in still_open:
            assoc.cut()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self._open_lock:
                if not self._open:
                    return
            time.sleep(0.02)
