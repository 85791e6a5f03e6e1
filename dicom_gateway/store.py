"""The C-STORE handler: file one received data set, answer its status.

Instances are stored exactly as received (no transcoding: the first transfer syntax the
caller proposes is accepted) and Success is answered only after the file is fsynced into
the spool and recorded in the index. The listener (``lean``) calls :meth:`StorageSCP.store`.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_gateway import metrics
from dicom_gateway.groupcommit import GroupCommit
from dicom_gateway.header import Unparsable, read_header
from dicom_gateway.index import Index
from dicom_gateway.lean import LeanServer
from dicom_gateway.network import tls_context
from dicom_gateway.spool import OutOfSpace, SpareFile, Spool
from haidang.ground.logs import uid_hash
from haidang.ground.settings import GatewaySettings

log = logging.getLogger("haidang.gateway.store")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110  # index or disk error other than space: the caller retries later


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
                log.debug(
                    "duplicate instance %s from %s: already stored",
                    uid_hash(sop_uid),
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
                quiet_period_s=self.settings.quiet_period(calling_ae),
            )
        except OutOfSpace as exc:
            log.error("C-STORE refused with 0xA700: %s", exc)
            metrics.INSTANCES.labels("out_of_resources").inc()
            return OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - never Success unless stored and indexed
            log.exception(
                "C-STORE of instance %s failed; answered 0x0110 so the sender retries",
                uid_hash(sop_uid),
            )
            metrics.INSTANCES.labels("failed").inc()
            return PROCESSING_FAILURE
        metrics.INSTANCES.labels("stored" if new else "duplicate").inc()
        if new:
            metrics.BYTES.inc(len(stream))
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "stored instance %s of study %s from %s",
                    uid_hash(sop_uid),
                    uid_hash(study_uid),
                    calling_ae,
                )
            if self.on_stored:
                self.on_stored()
        return SUCCESS

    # -- server -----------------------------------------------------------------------

    def start(self) -> None:
        ssl_ctx = tls_context(self.settings.tls) if self.settings.tls else None
        self.server = LeanServer(self, self.settings.host, self.settings.port,
                                 ssl_context=ssl_ctx, reuse_port=self.reuse_port,
                                 max_associations=self.settings.max_associations)
        log.debug("DICOM listener %s on %s:%s%s", self.settings.ae_title, self.settings.host,
                 self.server.server_address[1], " (TLS)" if ssl_ctx else "")

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.settings.port

    def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; instances being received get ``grace`` seconds to finish."""
        if self.server:
            self.server.shutdown(grace)
            self.server = None
