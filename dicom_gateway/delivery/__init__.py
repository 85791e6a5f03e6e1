"""Delivery targets: one module per channel, all fed by the index's export queue.

Like mercure's targets, each module knows how to send a batch of queued exports to its
receiver and nothing else: ``send(settings, destination, exports, spool_root)`` returns,
per export, ``None`` when delivered or a :class:`Failure` saying what went wrong and
whether the receiver refused it (a refusal will not get better by waiting, so it is
dead-lettered after ``export.rejected_max_attempts`` instead of ``export.max_attempts``).
Leases, backoff, dead letters, ``haidang exports list/retry`` and metrics are the
exporter's (:mod:`dicom_gateway.writeback`), the same for every channel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Failure:
    """Why one delivery did not happen."""

    reason: str
    refused: bool = False  # the receiver answered "no" (HL7 AE/AR, HTTP 4xx), not "later"


def http_failure(url: str, status: int, setting: str) -> Failure:
    """An HTTP answer that is not a success: 408, 429 and 5xx are worth retrying."""
    refused = status < 500 and status not in (408, 429)
    return Failure(f"{url} answered HTTP {status}; check {setting} and the receiver's log",
                   refused=refused)
