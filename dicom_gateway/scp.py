"""The DICOM listener: C-ECHO and C-STORE for every storage SOP class.

Instances are stored exactly as received (no transcoding: the first transfer
syntax the caller proposes is accepted) and Success is answered only after the
file is fsynced into the spool and recorded in the index.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import pydicom
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    evt,
)
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicom_gateway import metrics
from dicom_gateway.index import Index
from dicom_gateway.spool import OutOfSpace, SpareFile, Spool
from dicom_gateway.wellformed import Malformed, check_file_bytes, scan_top_level
from haidang.ground.settings import GatewaySettings, TLSSettings

log = logging.getLogger("haidang.gateway.scp")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110  # index or disk error other than space: the caller retries later

ROUTING_KEYS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "StudyDescription",
    "SeriesDescription",
    "Manufacturer",
    "SeriesNumber",
    "InstanceNumber",
)
# what the worklist shows a radiologist, recorded at ingest with the routing keys
STUDY_KEYS = (
    "PatientName",
    "PatientID",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "AccessionNumber",
    "StudyDate",
    "StudyTime",
)
INDEXED_KEYS = ROUTING_KEYS + STUDY_KEYS


class Unparsable(ValueError):
    """The received data set cannot be understood."""


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


HEADER_TAGS = [
    "SpecificCharacterSet",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    *INDEXED_KEYS,
]


def parse_header(data: bytes) -> pydicom.Dataset:
    """Parse the header up to the pixel data; raise Unparsable if it is not DICOM we can index.

    Reading walks every element's tag and length (a broken structure fails here); only
    the attributes the index and the routing rules need are decoded, to keep ingest lean.
    """
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=HEADER_TAGS)
        check_file_bytes(data, str(ds.file_meta.TransferSyntaxUID))  # cut short, bad lengths
        uids = [str(ds[k].value).strip() for k in HEADER_TAGS[1:5]]
        for key in INDEXED_KEYS:
            ds.get(key)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, the data is not understood
        raise Unparsable(f"{type(exc).__name__}: {exc}") from exc
    if not all(uids) or any(len(u) > 64 for u in uids):
        raise Unparsable("Study, Series or SOP Instance UID is empty or too long")
    return ds


class Header(NamedTuple):
    """What the index and the routing rules need from a received data set."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    attrs: dict[str, str]  # INDEXED_KEYS as str(ds.get(key, "") or ""), plus SOPClassUID


def header_of(ds: pydicom.Dataset) -> Header:
    attrs = {k: str(ds.get(k, "") or "") for k in INDEXED_KEYS}
    attrs["SOPClassUID"] = str(ds.SOPClassUID)
    return Header(str(ds.StudyInstanceUID).strip(), str(ds.SeriesInstanceUID).strip(),
                  str(ds.SOPInstanceUID).strip(), str(ds.SOPClassUID), attrs)


# tag -> (keyword, VR) of the attributes the quick header read decodes itself
_QUICK = {
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080016: ("SOPClassUID", b"UI"),
    0x00080060: ("Modality", b"CS"),
    0x00180015: ("BodyPartExamined", b"CS"),
    0x00185101: ("ViewPosition", b"CS"),
    0x00081030: ("StudyDescription", b"LO"),
    0x0008103E: ("SeriesDescription", b"LO"),
    0x00080070: ("Manufacturer", b"LO"),
    0x00200011: ("SeriesNumber", b"IS"),
    0x00200013: ("InstanceNumber", b"IS"),
    0x00100010: ("PatientName", b"PN"),
    0x00100020: ("PatientID", b"LO"),
    0x00100040: ("PatientSex", b"CS"),
    0x00101010: ("PatientAge", b"AS"),
    0x00100030: ("PatientBirthDate", b"DA"),
    0x00080050: ("AccessionNumber", b"SH"),
    0x00080020: ("StudyDate", b"DA"),
    0x00080030: ("StudyTime", b"TM"),
}
_QUICK_TAGS = frozenset(_QUICK)
_UID_CHARS = frozenset(b"0123456789.")
_DIGITS = frozenset(b"0123456789")


def _quick_value(vr: bytes, raw: bytes) -> str | None:
    """The value as ``str(pydicom value)`` would give it, or None where only pydicom can say.

    Only plain ASCII single values are decoded here (the common case); character sets,
    multiple values and anything unusual go to pydicom, so both paths agree by construction.
    """
    if b"\\" in raw or b"\x1b" in raw or not raw.isascii():
        return None
    if vr == b"UI":
        text = raw.rstrip(b"\x00 ")
        return text.decode() if text and _UID_CHARS.issuperset(text) else None
    if vr == b"IS":
        text = raw.strip(b" ")
        if text and not _DIGITS.issuperset(text):
            return None
        return text.decode() if text and int(text) else ""  # IS 0 is falsy: `or ""` gives ""
    if b"\x00" in raw.rstrip(b"\x00"):
        return None
    return raw.decode().rstrip("\x00 ")  # CS, LO: pydicom keeps leading spaces


def quick_header(stream: bytes | memoryview, transfer_syntax: str) -> Header | None:
    """The header from one structure walk, without pydicom; None where pydicom must decide.

    Raises Unparsable for a broken structure (as :func:`parse_header` does).
    """
    try:
        found = scan_top_level(stream, transfer_syntax, 0, _QUICK_TAGS)
    except Malformed as exc:
        raise Unparsable(f"Malformed: {exc}") from exc
    if found is None:
        return None
    values: dict[str, str] = {}
    for tag, (keyword, want_vr) in _QUICK.items():
        entry = found.get(tag)
        if entry is None:
            if tag in (0x0020000D, 0x0020000E, 0x00080018, 0x00080016):
                return None  # a required UID is missing: pydicom's parse says why
            values[keyword] = ""
            continue
        vr, offset, length = entry
        if vr is not None and vr != want_vr:
            return None
        value = _quick_value(want_vr, bytes(stream[offset:offset + length]))
        if value is None:
            return None
        values[keyword] = value
    uids = [values[k] for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                "SOPClassUID")]
    if any(len(u) > 64 for u in uids):
        return None
    attrs = {k: values[k] for k in INDEXED_KEYS}
    attrs["SOPClassUID"] = uids[3]
    return Header(*uids, attrs)


def read_header(head: bytes, stream: bytes | memoryview, transfer_syntax: str) -> Header:
    """The header of a received data set: the quick read, else pydicom's parse."""
    header = quick_header(stream, transfer_syntax)
    if header is None:
        header = header_of(parse_header(head + stream))
    return header


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_header(sop_class: str, sop_instance: str, transfer_syntax: str, source_ae: str) -> bytes:
    """Preamble, prefix and File Meta Information (explicit VR little endian, PS3.10 7.1).

    Encoded directly: building a pydicom FileMetaDataset per instance cost ~10% of ingest.
    ``SourceApplicationEntityTitle`` records the sender, for re-indexing after a crash.
    """
    body = b"".join(
        (
            _element(0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, b"UI", _padded(sop_class, b"\x00")),
            _element(0x0003, b"UI", _padded(sop_instance, b"\x00")),
            _element(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _element(0x0012, b"UI", _padded(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
            _element(0x0016, b"AE", _padded(source_ae or "UNKNOWN", b" ")),
        )
    )
    return b"\x00" * 128 + b"DICM" + _element(0x0000, b"UL", struct.pack("<I", len(body))) + body


class GroupCommit:
    """Index records of concurrent C-STOREs share one transaction (leader/follower).

    The first association to arrive commits its record and every record queued while it
    works, in one transaction; the others wait for that commit and then answer. One
    association alone commits its own record at once: no extra thread, no added wait. On
    SQLite this also keeps the listener's threads from queueing on the write lock (whose
    busy handler sleeps for milliseconds). Each caller still gets Success only after its
    own record is committed.
    """

    def __init__(self, index: Index, max_batch: int = 64):
        self.index = index
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[list] = []  # [record, done, new, error]
        self._leading = False

    def record(self, **record) -> bool:
        item = [record, False, False, None]
        with self._cond:
            self._pending.append(item)
            while not item[1]:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    for it in batch:  # interrupted: no waiter may wait for ever
                        if not it[1]:
                            it[3], it[1] = RuntimeError("index commit interrupted"), True
                    self._cond.notify_all()
        if item[3] is not None:
            raise item[3]
        return item[2]

    def _commit(self, batch: list[list]) -> None:
        try:
            results = self.index.record_instances([it[0] for it in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which answers 0x0110
            if len(batch) > 1:  # one bad record must not fail the others: one by one
                for it in batch:
                    self._commit([it])
            else:
                batch[0][3], batch[0][1] = exc, True
            return
        for it, new in zip(batch, results, strict=True):
            it[2], it[1] = new, True


class GatewayAE(AE):
    """An AE whose listener uses the lean receive path (see ``fastpath``)."""

    reuse_port = False

    def make_server(self, address, *args, server_class=None, **kwargs):
        from dicom_gateway.fastpath import GatewayServer, ReusePortGatewayServer

        if server_class is ThreadedAssociationServer:
            server_class = ReusePortGatewayServer if self.reuse_port else GatewayServer
        return super().make_server(address, *args, server_class=server_class, **kwargs)


class StorageSCP:
    """pynetdicom event handlers bound to one spool and index."""

    def __init__(
        self,
        settings: GatewaySettings,
        spool: Spool,
        index: Index,
        on_stored: Callable[[], None] | None = None,
    ):
        self.settings = settings
        self.spool = spool
        self.index = index
        self.on_stored = on_stored
        self._allowed = {(s.ae_title.strip(), s.host) for s in settings.allowed_sources}
        self._quiet = {
            s.ae_title.strip(): s.quiet_period_s
            for s in settings.allowed_sources
            if s.quiet_period_s is not None
        }
        self.server = None
        self.reuse_port = False
        self.commits = GroupCommit(index)

    # -- association control ----------------------------------------------------------

    def is_allowed(self, ae_title: str, host: str) -> bool:
        if not self._allowed:
            return True
        ae_title = ae_title.strip()
        return any(
            ae == ae_title and (h is None or h == "" or h == host) for ae, h in self._allowed
        )

    def quiet_period(self, ae_title: str) -> float:
        q = self._quiet.get(ae_title.strip())
        return self.settings.quiet_period_s if q is None else q

    def handle_conn_open(self, event) -> None:
        set_nodelay(event.assoc.dul.socket.socket)

    def handle_requested(self, event) -> None:
        assoc = event.assoc
        ae_title = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = assoc.requestor.address
        if not self.is_allowed(ae_title, host):
            log.warning(
                "association rejected: calling AE %s from %s is not in gateway.allowed_sources",
                ae_title,
                host,
            )
            metrics.INSTANCES.labels("association_rejected").inc()
            # permanent rejection, service user, calling AE title not recognised
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()

    def handle_echo(self, event) -> int:
        return SUCCESS

    # -- storage ----------------------------------------------------------------------

    def handle_store(self, event) -> int:
        """pynetdicom's EVT_C_STORE: the data set bytes exactly as received."""
        try:
            req = event.request
            stream = req.DataSet.getvalue()
            sop_class, sop_instance = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
            transfer_syntax = str(event.context.transfer_syntax)
        except Exception as exc:  # noqa: BLE001
            log.warning("C-STORE without a data set (%s)", exc)
            metrics.INSTANCES.labels("unparsable").inc()
            return CANNOT_UNDERSTAND
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        return self.store(calling_ae, sop_class, sop_instance, transfer_syntax, stream)

    def store(self, calling_ae: str, sop_class: str, sop_instance: str, transfer_syntax: str,
              stream: bytes | memoryview, spare: SpareFile | None = None) -> int:
        """File one received data set; the returned status is the C-STORE response.

        ``spare``: a temporary file made ahead (``Spool.spare``) to write it into; used or
        not, the caller discards it afterwards."""
        t0 = time.perf_counter()
        status = self._store(calling_ae, sop_class, sop_instance, transfer_syntax, stream,
                             spare)
        metrics.STORE_SECONDS.observe(time.perf_counter() - t0)
        return status

    def _store(self, calling_ae: str, sop_class: str, sop_instance: str, transfer_syntax: str,
               stream: bytes | memoryview, spare: SpareFile | None = None) -> int:
        head = file_header(sop_class, sop_instance, transfer_syntax, calling_ae)
        try:
            header = read_header(head, stream, transfer_syntax)
        except Unparsable as exc:
            log.warning(
                "C-STORE from %s refused with 0xC000: data set cannot be parsed (%s)",
                calling_ae,
                exc,
            )
            metrics.INSTANCES.labels("unparsable").inc()
            return CANNOT_UNDERSTAND
        sop_uid, study_uid, series_uid = header.sop_uid, header.study_uid, header.series_uid
        try:
            if self.index.has_instance(sop_uid):
                metrics.INSTANCES.labels("duplicate").inc()
                log.info(
                    "duplicate instance %s from %s: already stored",
                    metrics.uid_hash(sop_uid),
                    calling_ae,
                )
                return SUCCESS
            path = self.spool.instance_path(study_uid, series_uid, sop_uid)
            self.spool.store(path, [head, stream], spare)
            new = self.commits.record(
                sop_uid=sop_uid,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax=transfer_syntax,
                path=str(path.relative_to(self.spool.root)),
                size=len(stream),
                calling_ae=calling_ae,
                attrs=header.attrs,
                quiet_period_s=self.quiet_period(calling_ae),
            )
        except OutOfSpace as exc:
            log.error("C-STORE refused with 0xA700: %s", exc)
            metrics.INSTANCES.labels("out_of_resources").inc()
            return OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - never Success unless stored and indexed
            log.exception(
                "C-STORE of instance %s failed; answered 0x0110 so the sender retries",
                metrics.uid_hash(sop_uid),
            )
            metrics.INSTANCES.labels("failed").inc()
            return PROCESSING_FAILURE
        metrics.INSTANCES.labels("stored" if new else "duplicate").inc()
        if new:
            metrics.BYTES.inc(len(stream))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "stored instance %s of study %s from %s",
                    metrics.uid_hash(sop_uid),
                    metrics.uid_hash(study_uid),
                    calling_ae,
                )
            if self.on_stored:
                self.on_stored()
        return SUCCESS

    # -- server -----------------------------------------------------------------------

    def make_ae(self) -> AE:
        # accept every storage-like abstract syntax (known, private or unknown) and the first
        # transfer syntax the caller proposes for it: data are stored exactly as sent
        _config.UNRESTRICTED_STORAGE_SERVICE = True
        ae = GatewayAE(ae_title=self.settings.ae_title)
        ae.reuse_port = self.reuse_port
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = self.settings.max_pdu
        ae.maximum_associations = 32
        ae.network_timeout = 60
        ae.dimse_timeout = 120
        return ae

    def start(self) -> None:
        ssl_ctx = tls_context(self.settings.tls) if self.settings.tls else None
        address = (self.settings.host, self.settings.port)
        if self.settings.receive_path == "lean":
            from dicom_gateway.lean import LeanServer

            self.server = LeanServer(self, *address, ssl_context=ssl_ctx,
                                     reuse_port=self.reuse_port)
        else:
            handlers = [
                (evt.EVT_CONN_OPEN, self.handle_conn_open),
                (evt.EVT_REQUESTED, self.handle_requested),
                (evt.EVT_C_ECHO, self.handle_echo),
                (evt.EVT_C_STORE, self.handle_store),
            ]
            self.server = self.make_ae().start_server(
                address, block=False, evt_handlers=handlers, ssl_context=ssl_ctx)
            set_nodelay(self.server.socket)
        log.info(
            "DICOM listener %s on %s:%s (%s receive path%s)",
            self.settings.ae_title,
            self.settings.host,
            self.server.server_address[1],
            self.settings.receive_path,
            ", TLS" if ssl_ctx else "",
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.settings.port

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server = None
