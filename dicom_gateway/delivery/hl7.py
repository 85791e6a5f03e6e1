"""HL7 v2 target: messages sent over MLLP to the RIS/HIS listener (``[hl7]``), ACK awaited.

Uses the ``hl7`` package's asyncio MLLP streams. The answer decides: AA/CA delivered;
AE/AR/CE/CR refused (dead-lettered after ``export.rejected_max_attempts``); no answer
within ``hl7.timeout_s`` or no connection: retried with backoff. A resent message keeps
its control id (MSH-10), so the receiver can tell it is the same one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import hl7
from hl7.mllp import open_hl7_connection

from dicom_gateway.delivery import Failure
from dicom_gateway.index import Export
from haidang.ground.settings import Settings

ACCEPTED = ("AA", "CA")


def ack_outcome(ack: hl7.Message, control_id: str) -> Failure | None:
    """None when ``ack`` accepts the message ``control_id``; else why not."""
    code = str(ack.extract_field("MSA", 1, 1) or "")
    answered = str(ack.extract_field("MSA", 1, 2) or "")
    if answered and answered != control_id:
        return Failure(f"ACK for message {answered}, expected {control_id}")
    if code in ACCEPTED:
        return None
    text = str(ack.extract_field("MSA", 1, 3) or "") or "no text"
    return Failure(f"HL7 receiver answered {code or 'no MSA-1'} ({text}); check the "
                   "receiver's log and the [hl7] settings", refused=True)


async def _send_all(settings: Settings, bodies: list[tuple[str, str]]) -> list[Failure | None]:
    cfg = settings.hl7
    where = f"{cfg.host}:{cfg.port}"
    out: list[Failure | None] = []
    try:
        reader, writer = await asyncio.wait_for(
            open_hl7_connection(cfg.host, cfg.port, encoding="utf-8"), cfg.timeout_s)
    except (OSError, TimeoutError) as exc:
        return [Failure(f"HL7 listener {where} not reached: {type(exc).__name__}; "
                        "check hl7.host/hl7.port")] * len(bodies)
    try:
        for control_id, body in bodies:
            try:
                writer.writemessage(hl7.parse(body, encoding="utf-8"))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), cfg.timeout_s)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                failure = Failure(f"no ACK from HL7 listener {where} within {cfg.timeout_s:g} "
                                  f"s ({type(exc).__name__})")
                out += [failure] * (len(bodies) - len(out))  # the connection is unusable now
                break
            out.append(ack_outcome(ack, control_id))
    finally:
        writer.close()
    return out


def send(settings: Settings, destination: str, exports: list[Export],
         spool_root: Path) -> list[Failure | None]:
    if not settings.hl7.host:
        return [Failure("hl7.host is not set any more")] * len(exports)
    # bytes, not read_text: universal newlines would turn the segment separator \r into \n
    bodies = [(e.sop_uid, (spool_root / e.path).read_bytes().decode("utf-8")) for e in exports]
    return asyncio.run(_send_all(settings, bodies))
