"""Shared set-up for the gateway tests: settings on loopback, waiting on the index."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pydicom

from haidang.ground.settings import Settings, settings_env  # noqa: F401 - tests use it
from tests.support.pacs import free_port, storescu

# dcmtk storescu proposes a compressed transfer syntax only when told which one (-x?);
# with --required it otherwise offers uncompressed syntaxes and fails to send the file.
PROPOSE = {
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2": "-xi",
}


def gateway_settings(tmp: Path, orthanc=None, **kwargs) -> Settings:
    return Settings.model_validate(settings_data(tmp, orthanc, **kwargs))


def settings_data(tmp: Path, orthanc=None, *, allowed=None, quiet: float = 0.7,
                  port: int | None = None, min_free_bytes: int = 1024 * 1024,
                  analyses=("study-summary",), **export) -> dict:
    return {
        "gateway": {
            "ae_title": "HAIDANG",
            "host": "127.0.0.1",
            "port": port or free_port(),
            "allowed_sources": allowed
            if allowed is not None
            else [{"ae_title": "STORESCU", "host": "127.0.0.1"}, {"ae_title": "ORTHANC"}],
            "quiet_period_s": quiet,
            "spool_dir": str(tmp / "spool"),
            "database_url": f"sqlite:///{tmp / 'haidang.db'}",
            "min_free_bytes": min_free_bytes,
        },
        "destinations": []
        if orthanc is None
        else [
            {
                "name": "pacs",
                "ae_title": orthanc.aet,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
            }
        ],
        "export": {"max_attempts": 20, "base_delay_s": 0.3, "max_delay_s": 1.0, **export},
        "routes": [{"name": "all", "match": {}, "analyses": list(analyses)}],
    }


def send_as_is(
    files,
    port: int,
    called_ae: str = "HAIDANG",
    calling_ae: str = "STORESCU",
    extra: list[str] | None = None,
) -> list:
    """Send files with dcmtk storescu, one run per transfer syntax, each in its own syntax."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        ts = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        groups.setdefault(PROPOSE.get(ts, "-xe"), []).append(Path(f))
    return [
        storescu(group, port, called_ae, calling_ae, extra=[opt, *(extra or [])])
        for opt, group in groups.items()
    ]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def _hash_items(h, ds: pydicom.Dataset) -> None:
    for elem in ds:
        if elem.tag.element == 0:  # group lengths are an encoding detail senders rewrite
            continue
        vr = "OB/OW" if elem.VR in ("OB", "OW") else elem.VR  # dcmtk fixes OW on encapsulated data
        h.update(f"{elem.tag}{vr}".encode())
        if elem.VR == "SQ":
            for item in elem.value:
                h.update(b"item")
                _hash_items(h, item)
        elif isinstance(elem.value, bytes | bytearray):
            h.update(bytes(elem.value))
        else:
            h.update(repr(elem.value).encode())


def dataset_hash(path: Path) -> str:
    """A hash of the data set's content: every element's tag, VR and value (pixel data bytes).

    dcmtk storescu re-encodes what it reads (group lengths, padding, sequence lengths), so
    the bytes on the wire differ from the file sent; the content must not.
    """
    ds = pydicom.dcmread(path)
    h = hashlib.sha256(str(ds.file_meta.TransferSyntaxUID).encode())
    _hash_items(h, ds)
    return h.hexdigest()
