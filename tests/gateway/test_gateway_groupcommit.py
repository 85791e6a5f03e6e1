"""Group commit of index records: concurrent C-STOREs share a transaction, each caller
learns only its own outcome, and one bad record fails only itself."""

from __future__ import annotations

import threading
import time

import pytest

from dicom_gateway.groupcommit import GroupCommit
from dicom_gateway.index import Index


def _record(n: int, study: str = "1.2.4.1", **extra) -> dict:
    return dict(sop_uid=f"1.2.3.{n}", study_uid=study, series_uid="1.2.5", sop_class_uid="1.2",
                transfer_syntax="1.2.840.10008.1.2.1", path=f"p/{n}.dcm", size=10,
                calling_ae="STORESCU", attrs={"Modality": "CT"}, quiet_period_s=3.0, **extra)


@pytest.fixture
def counted(tmp_path):
    """An index whose batch method records the batch sizes and holds the first batch."""
    index = Index(f"sqlite:///{tmp_path / 'h.db'}")
    sizes: list[int] = []
    original = index.record_instances

    def record_instances(records):
        sizes.append(len(records))
        if len(sizes) == 1:
            time.sleep(0.2)  # the others queue up meanwhile
        return original(records)

    index.record_instances = record_instances
    yield index, sizes
    index.close()


def _run_concurrently(commits: GroupCommit, records: list[dict]) -> list:
    out: list = [None] * len(records)
    start = threading.Barrier(len(records))

    def one(i):
        start.wait()
        if i:
            time.sleep(0.02)  # after the first, which leads
        try:
            out[i] = commits.record(**records[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            out[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(records))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_concurrent_records_share_transactions_and_all_are_indexed(counted):
    index, sizes = counted
    records = [_record(n, study=f"1.2.4.{n % 3}") for n in range(12)]
    out = _run_concurrently(GroupCommit(index), records)
    assert out == [True] * 12
    assert max(sizes) > 1 and sum(sizes) == 12  # batched, nothing twice
    assert index.counts()["instances"] == 12
    counts = dict(index.query("SELECT study_uid, instance_count FROM studies"))
    assert counts == {"1.2.4.0": 4, "1.2.4.1": 4, "1.2.4.2": 4}


def test_duplicate_in_a_batch_is_reported_as_not_new(counted):
    index, _ = counted
    out = _run_concurrently(GroupCommit(index), [_record(1), _record(2), _record(1)])
    assert sorted(out) == [False, True, True]
    assert out[0] is True  # the first to arrive is the one stored
    assert index.counts()["instances"] == 2


def test_a_bad_record_fails_alone(counted):
    index, sizes = counted
    bad = _record(7)
    bad["attrs"] = {"x": object()}  # cannot be written: the transaction raises
    out = _run_concurrently(GroupCommit(index), [_record(1), _record(2), bad, _record(3)])
    assert out[:2] == [True, True] and out[3] is True
    assert isinstance(out[2], TypeError)
    assert index.counts()["instances"] == 3
    assert not index.query("SELECT 1 FROM instances WHERE sop_uid = '1.2.3.7'")


def test_one_caller_commits_at_once(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'h.db'}")
    commits = GroupCommit(index)
    assert commits.record(**_record(1)) is True
    assert commits.record(**_record(1)) is False
    index.close()
