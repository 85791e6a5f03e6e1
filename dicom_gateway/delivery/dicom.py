"""DICOM target: C-STORE result objects to a ``[[destinations]]`` PACS, one association
per batch. Result files are durable in the spool before their export rows exist."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

from dicom_gateway.delivery import Failure
from dicom_gateway.index import Export
from dicom_gateway.network import NODELAY_HANDLERS, tls_context
from haidang.ground.settings import Destination, Settings


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
    kwargs = {"ae_title": dest.ae_title, "evt_handlers": NODELAY_HANDLERS}
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


def send(settings: Settings, destination: str, exports: list[Export],
         spool_root: Path) -> list[Failure | None]:
    dest = next((d for d in settings.destinations if d.name == destination), None)
    if dest is None:
        return [Failure(f"destination {destination!r} is no longer in [[destinations]]")
                ] * len(exports)
    errors = store_files(dest, [spool_root / e.path for e in exports],
                         settings.export.calling_ae_title)
    return [None if err is None else Failure(err) for err in errors]
