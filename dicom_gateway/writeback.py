"""Write-back: the one delivery loop for every result channel (DICOM, FHIR, HL7, webhook).

A job commits its results and their exports in one transaction; only then does this loop
send them, so a receiver that is slow or down never holds up a study, and a crash between
the commit and the send is made good after restart (an unfinished export is taken back).
Each channel's sender lives in :mod:`dicom_gateway.delivery`. Failures back off
exponentially; after ``export.max_attempts`` (``export.rejected_max_attempts`` when the
receiver refused) an export is dead-lettered until ``haidang exports retry``.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from pathlib import Path

from pydicom import uid

from dicom_gateway import metrics
from dicom_gateway.delivery import Failure
from dicom_gateway.delivery import dicom as dicom_target
from dicom_gateway.delivery import fhir as fhir_target
from dicom_gateway.delivery import hl7 as hl7_target
from dicom_gateway.delivery import webhook as webhook_target
from dicom_gateway.index import Export, Index
from haidang.ground import audit
from haidang.ground.logs import uid_hash
from haidang.ground.settings import Settings

log = logging.getLogger("haidang.gateway.writeback")

TARGETS = {
    "dicom": dicom_target.send,
    "fhir": fhir_target.send,
    "hl7": hl7_target.send,
    "webhook": webhook_target.send,
}


# Pictures for the radiologist's screen: the presentation state and the visual summary. A
# sender of their own takes them, so the objects and messages that carry the verdict (SR,
# HL7 result and priority, FHIR report, webhook) never queue behind megabytes of pictures:
# in a burst a study is flagged before the previous studies' pictures have all been sent.
PICTURES = (
    str(uid.GrayscaleSoftcopyPresentationStateStorage),
    str(uid.SecondaryCaptureImageStorage),
    str(uid.MultiFrameTrueColorSecondaryCaptureImageStorage),
)


class Exporter:
    """Sends due exports, one batch per (channel, destination): one association or connection.

    ``lane``: "verdicts" (everything but the pictures), "pictures", or None (everything, as
    ``haidang exports`` and the tests drive it).
    """

    def __init__(self, settings: Settings, index: Index, spool_root: Path,
                 lane: str | None = None):
        self.settings = settings
        self.index = index
        self.spool_root = Path(spool_root)
        self.kinds = {None: {}, "verdicts": {"classes": PICTURES, "exclude": True},
                      "pictures": {"classes": PICTURES}}[lane]

    def run_once(self, batch: int = 64) -> int:
        """Send what is due; returns how many exports were attempted."""
        claimed = self.index.claim_exports(batch, lease_s=120, **self.kinds)
        groups: dict[tuple[str, str], list[Export]] = defaultdict(list)
        for exp in claimed:
            groups[(exp.channel, exp.destination)].append(exp)
        for (channel, destination), exports in groups.items():
            self._send(channel, destination, exports)
        return len(claimed)

    def _send(self, channel: str, destination: str, exports: list[Export]) -> None:
        cfg = self.settings.export
        t0 = time.perf_counter()
        target = TARGETS.get(channel)
        try:
            if target is None:
                raise ValueError(f"unknown delivery channel {channel!r}")
            outcomes = target(self.settings, destination, exports, self.spool_root)
        except Exception as exc:  # noqa: BLE001 - any failure is retried with backoff
            outcomes = [Failure(f"{type(exc).__name__}: {exc}")] * len(exports)
        metrics.EXPORT_SECONDS.labels(channel).observe(time.perf_counter() - t0)
        for exp, failure in zip(exports, outcomes, strict=True):
            audit.record(self.settings, "export", {"study": exp.study_uid}, export_id=exp.id,
                         channel=channel, destination=destination,
                         outcome="delivered" if failure is None else "failed")
            if failure is None:
                self.index.export_done(exp.id)
                metrics.EXPORTS.labels(channel, "delivered").inc()
                log.debug("export %s (%s) of study %s delivered to %s", exp.id, channel,
                         uid_hash(exp.study_uid), destination)
                continue
            tries = cfg.rejected_max_attempts if failure.refused else cfg.max_attempts
            state = self.index.export_failed(
                exp.id, failure.reason, tries, cfg.base_delay_s, cfg.max_delay_s)
            metrics.EXPORTS.labels(channel, "dead" if state == "dead" else "retry").inc()
            log.warning(
                "export %s (%s) to %s failed (attempt %s): %s%s", exp.id, channel, destination,
                exp.attempts + 1, failure.reason,
                "; dead-lettered: haidang exports retry ID" if state == "dead" else "")
