"""Crash soak, short form: SIGKILL the gateway while dcmtk streams; nothing acknowledged is lost.

The full form runs by hand: ``python -m bench.soak.run --rounds 20 --instances 500``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]


def _soak_module():
    from bench.soak import run

    return run


def test_crash_soak_short(tmp_path, orthanc):
    soak = _soak_module()
    res = soak.run_soak(tmp_path, rounds=3, instances=60, per_study=10, assocs=3, quiet_s=3.0,
                        seed=11, orthanc=orthanc)
    print(res.table())
    assert res.rounds == 3 and res.kills_mid_stream + res.kills_after_stream == 3
    assert res.kills_mid_stream >= 1, "no kill landed while instances were streaming"
    assert res.acknowledged == 60, res.problems
    assert res.lost == 0, res.problems
    assert res.byte_identical == res.acknowledged, res.problems
    assert res.studies == 6 and res.studies_processed == 6, res.problems
    assert res.studies_one_current == 6 and res.current_in_pacs == 6, res.problems
    assert res.duplicates_in_pacs == res.superseded_in_pacs, res.problems
    assert res.audit_records > res.rounds  # a settings record at every start; chain intact
    assert not res.problems


def test_dataset_bytes_reads_past_the_meta_header(tmp_path):
    soak = _soak_module()
    [f] = soak.make_corpus(tmp_path, 1, 1)
    raw = f.read_bytes()
    body = soak.dataset_bytes(raw)
    assert raw.endswith(body) and body.startswith(b"\x08\x00")  # first element of group 0008
    assert len(raw) - len(body) > 132
