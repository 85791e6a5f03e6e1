"""A small DICOM client for users and tests: C-ECHO, and C-STORE of files as they are.

Each file is sent in its own transfer syntax (raw bytes from disk, no re-encoding),
over one association, with TCP_NODELAY on the socket.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pydicom
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from dicom_gateway.network import NODELAY_HANDLERS

MAX_CONTEXTS = 128

def _describe(assoc) -> str:
    if assoc.is_rejected:
        return "association rejected (is our AE title allowed by the peer?)"
    return "no association: is the peer running, and are host, port and called AE right?"


def echo(
    host: str, port: int, called_ae: str, calling_ae: str = "HAIDANG_SCU", timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> tuple[bool, str]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=NODELAY_HANDLERS,
                         tls_args=(tls, None) if tls else None)
    if not assoc.is_established:
        return False, f": {_describe(assoc)}"
    try:
        status = assoc.send_c_echo()
        code = getattr(status, "Status", None)
        return code == 0x0000, "" if code == 0 else f": status {code}"
    finally:
        assoc.release()


def expand_files(items: list[str]) -> list[Path]:
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(p)
    return out


def send_files(
    host: str, port: int, called_ae: str, calling_ae: str, files: list[Path], timeout: float = 30.0
) -> list[tuple[Path, str | None]]:
    """C-STORE the files; returns (file, None) per success or (file, reason)."""
    results: list[tuple[Path, str | None]] = []
    pending: list[tuple[Path, str, str]] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            pending.append(
                (f, str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
            )
        except Exception as exc:  # noqa: BLE001
            results.append((f, f"not a DICOM file: {exc}"))
    while pending:
        batch, contexts = [], []
        while pending and (
            len(contexts) < MAX_CONTEXTS or (pending[0][1], pending[0][2]) in contexts
        ):
            item = pending.pop(0)
            if (item[1], item[2]) not in contexts:
                contexts.append((item[1], item[2]))
            batch.append(item)
        results += _send_batch(host, port, called_ae, calling_ae, batch, contexts, timeout)
    return results


def _send_batch(host, port, called_ae, calling_ae, batch, contexts, timeout):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in contexts]
    assoc = ae.associate(
        host, port, ae_title=called_ae, evt_handlers=NODELAY_HANDLERS
    )
    if not assoc.is_established:
        return [(f, _describe(assoc)) for f, _, _ in batch]
    out = []
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's own bytes go on the wire
    try:
        for f, _sop, _ts in batch:
            if not assoc.is_established:
                out.append((f, "association ended by the peer"))
                continue
            try:
                status = assoc.send_c_store(f)
            except Exception as exc:  # noqa: BLE001 - e.g. the peer did not accept the syntax
                out.append((f, f"{type(exc).__name__}: {exc}"))
                continue
            code = getattr(status, "Status", None)
            if code is None:
                out.append((f, "no response (timeout or abort)"))
            elif code == 0x0000 or code & 0xF000 == 0xB000:
                out.append((f, None))
            else:
                out.append((f, f"status 0x{code:04X}"))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        if assoc.is_established:
            assoc.release()
    return out
