"""Write-back: C-STORE the result objects to the configured PACS destinations.

Result files are already durable in the spool (written before their export rows),
so an export survives restarts. Failures back off exponentially; after
``export.max_attempts`` an export is dead-lettered until ``haidang exports retry``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context

from dicom_gateway import metrics
from dicom_gateway.index import Export, Index
from dicom_gateway.network import set_nodelay, tls_context
from haidang import audit
from haidang.settings import Destination, Settings

log = logging.getLogger("haidang.gateway.writeback")


def _nodelay(event) -> None:
    set_nodelay(event.assoc.dul.socket.socket)


def store_files(
    dest: Destination, paths: list[Path], calling_ae: str, timeout: float = 30
) -> list[str | None]:
    """Send files over one association; returns None per success, else the reason it failed."""
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    contexts = {}
    for ds in datasets:
        key = str(ds.SOPClassUID)
        contexts.setdefault(key, {str(ds.file_meta.TransferSyntaxUID)})
        contexts[key].add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, syntaxes in contexts.items():
        ae.requested_contexts.append(
            build_context(
                sop_class, sorted(syntaxes | {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"})
            )
        )
    kwargs = {"ae_title": dest.ae_title, "evt_handlers": [(evt.EVT_CONN_OPEN, _nodelay)]}
    if dest.tls:
        kwargs["tls_args"] = (tls_context(dest.tls, server=False), None)
    assoc = ae.associate(dest.host, dest.port, **kwargs)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no answer"
        msg = (
            f"cannot associate with {dest.name} ({dest.ae_title}@{dest.host}:{dest.port}): "
            f"{reason}; check that the PACS is up and knows our AE title"
        )
        return [msg] * len(paths)
    out: list[str | None] = []
    try:
        for ds in datasets:
            if not assoc.is_established:
                out.append("association dropped by the destination")
                continue
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                out.append("no C-STORE response (timeout or abort)")
            elif code in (0x0000, 0xB000, 0xB007, 0xB006):  # success or warning: stored
                out.append(None)
            else:
                out.append(f"C-STORE status 0x{code:04X} from {dest.name}")
    finally:
        if assoc.is_established:
            assoc.release()
    return out


class Exporter:
    """Sends due exports, grouped per destination into one association each."""

    def __init__(self, settings: Settings, index: Index, spool_root: Path):
        self.settings = settings
        self.index = index
        self.spool_root = Path(spool_root)

    def run_once(self, batch: int = 64) -> int:
        """Send what is due; returns how many exports were attempted."""
        claimed = self.index.claim_exports(batch, lease_s=120)
        by_dest: dict[str, list[Export]] = defaultdict(list)
        for exp in claimed:
            by_dest[exp.destination].append(exp)
        for name, exports in by_dest.items():
            self._send(name, exports)
        return len(claimed)

    def _send(self, name: str, exports: list[Export]) -> None:
        cfg = self.settings.export
        dest = next((d for d in self.settings.destinations if d.name == name), None)
        t0 = time.perf_counter()
        if dest is None:
            errors: list[str | None] = [
                f"destination {name!r} is no longer in [[destinations]]"
            ] * len(exports)
        else:
            paths = [self.spool_root / e.path for e in exports]
            try:
                errors = store_files(dest, paths, cfg.calling_ae_title)
            except Exception as exc:  # noqa: BLE001 - any failure is retried with backoff
                errors = [f"{type(exc).__name__}: {exc}"] * len(exports)
        metrics.EXPORT_SECONDS.observe(time.perf_counter() - t0)
        for exp, err in zip(exports, errors, strict=True):
            audit.record(self.settings, "export", {"study": exp.study_uid}, export_id=exp.id,
                         destination=name, outcome="delivered" if err is None else "failed")
            if err is None:
                self.index.export_done(exp.id)
                metrics.EXPORTS.labels("delivered").inc()
                log.info(
                    "export %s of study %s delivered to %s",
                    exp.id,
                    metrics.uid_hash(exp.study_uid),
                    name,
                )
            else:
                state = self.index.export_failed(
                    exp.id, err, cfg.max_attempts, cfg.base_delay_s, cfg.max_delay_s
                )
                metrics.EXPORTS.labels("dead" if state == "dead" else "retry").inc()
                log.warning(
                    "export %s to %s failed (attempt %s): %s%s",
                    exp.id,
                    name,
                    exp.attempts + 1,
                    err,
                    "; dead-lettered: haidang exports retry ID" if state == "dead" else "",
                )
