"""The index and job queue on their own: idempotence, re-opening, leases, backoff, dead letters."""

from __future__ import annotations

from dicom_gateway.index import Index, PostgresDialect
from dicom_gateway.spool import Spool, safe_name, write_atomic


def _record(index, sop, study="1.2.3", now=0.0, quiet=2.0):
    return index.record_instance(sop_uid=sop, study_uid=study, series_uid="1.2.3.1",
                                 sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                 transfer_syntax="1.2.840.10008.1.2.1", path=f"x/{sop}.dcm",
                                 size=10, calling_ae="PACS", attrs={"Modality": "CT"},
                                 quiet_period_s=quiet, now=now)


def test_assembly_quiet_period_reopen_and_supersede(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'i.db'}")
    assert _record(index, "1.1", now=100.0)
    assert not _record(index, "1.1", now=100.5)  # idempotent
    assert _record(index, "1.2", now=101.0)
    assert index.assemble_due(now=102.9) == []  # 1.9 s quiet < 2 s
    assert index.assemble_due(now=103.0) == [("1.2.3", 1)]
    assert index.assemble_due(now=200.0) == []  # assembled once
    job = index.claim_job("w1", lease_s=60, now=103.1)
    assert (job.study_uid, job.generation) == ("1.2.3", 1)
    assert index.claim_job("w2", lease_s=60, now=103.2) is None
    index.complete_job(job, [{"analysis": "a", "state": "current", "priority": "URGENT",
                              "summary": {"p": 0.9}}], now=104.0)
    assert index.study("1.2.3")["state"] == "processed"
    # a late instance re-opens the study; its new result supersedes the first
    assert _record(index, "1.3", now=300.0)
    assert index.study("1.2.3")["state"] == "receiving"
    assert index.assemble_due(now=302.0) == [("1.2.3", 2)]
    job2 = index.claim_job("w1", lease_s=60, now=302.1)
    index.complete_job(job2, [{"analysis": "a", "state": "current", "priority": "ROUTINE",
                               "summary": {"p": 0.1}}], now=303.0)
    first, second = index.results("1.2.3")
    assert (first["state"], first["superseded_by"], first["priority"]) == ("superseded",
                                                                         second["id"], "URGENT")
    assert second["state"] == "current" and index.study("1.2.3")["instance_count"] == 3


def test_stale_job_superseded_and_expired_lease_reclaimed(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'i.db'}")
    _record(index, "1.1", now=0.0)
    index.assemble_due(now=5.0)
    _record(index, "1.2", now=6.0)  # re-opened before the job ran
    index.assemble_due(now=10.0)
    job = index.claim_job("w1", lease_s=30, now=10.0)
    assert job.generation == 2  # the generation-1 job was skipped as superseded
    states = dict(index.query("SELECT generation, state FROM jobs"))
    assert states == {1: "superseded", 2: "running"}
    # the worker died: once its lease runs out another worker takes the job
    assert index.claim_job("w2", lease_s=30, now=20.0) is None
    again = index.claim_job("w2", lease_s=30, now=41.0)
    assert again.id == job.id and again.attempts == 2
    # embedded mode: on restart running work is taken back at once
    assert index.resume() == {"jobs": 1, "exports": 0}


def test_newer_generation_waits_for_the_running_job_of_its_study(tmp_path):
    """Several job workers: a re-opened study is never analysed twice at once, so the older
    generation cannot finish last and supersede the newer result."""
    index = Index(f"sqlite:///{tmp_path / 'i.db'}")
    _record(index, "1.1", now=0.0)
    _record(index, "9.1", study="9.9", now=0.0)
    index.assemble_due(now=5.0)
    first = index.claim_job("w1", lease_s=30, now=5.0)
    assert (first.study_uid, first.generation) == ("1.2.3", 1)
    _record(index, "1.2", now=6.0)  # a late instance while generation 1 is being analysed
    index.assemble_due(now=10.0)
    other = index.claim_job("w2", lease_s=30, now=10.0)
    assert other.study_uid == "9.9"  # another study's job is free to run in parallel
    assert index.claim_job("w3", lease_s=30, now=10.5) is None  # generation 2 waits
    index.complete_job(first, [{"analysis": "a", "state": "current", "priority": "URGENT",
                                "summary": {}}], now=11.0)
    second = index.claim_job("w3", lease_s=30, now=11.5)
    assert (second.study_uid, second.generation) == ("1.2.3", 2)
    index.complete_job(second, [{"analysis": "a", "state": "current", "priority": "ROUTINE",
                                 "summary": {}}], now=12.0)
    states = [(r["generation"], r["state"]) for r in index.results("1.2.3")]
    assert states == [(1, "superseded"), (2, "current")]


def test_export_backoff_dead_letter_and_retry(tmp_path):
    index = Index(f"sqlite:///{tmp_path / 'i.db'}")
    _record(index, "1.1", now=0.0)
    index.assemble_due(now=5.0)
    job = index.claim_job("w", lease_s=30, now=5.0)
    index.complete_job(job, [{"analysis": "a", "state": "current", "priority": "ROUTINE",
                              "summary": {}, "exports": [
                                  {"destination": "pacs", "sop_uid": "9.9", "path": "r/9.9.dcm",
                                   "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.33",
                                   "series_uid": "9"}]}], now=6.0)
    [exp] = index.claim_exports(10, lease_s=60, now=6.0)
    assert index.claim_exports(10, lease_s=60, now=7.0) == []  # leased
    assert index.export_failed(exp.id, "down", 4, 2.0, 5.0, now=10.0) == "pending"
    assert index.list_exports()[0]["next_attempt_at"] == 12.0  # 2 s
    assert index.claim_exports(10, lease_s=60, now=11.0) == []
    index.claim_exports(10, lease_s=60, now=12.0)
    assert index.export_failed(exp.id, "down", 4, 2.0, 5.0, now=12.0) == "pending"
    assert index.list_exports()[0]["next_attempt_at"] == 16.0  # 4 s
    index.claim_exports(10, lease_s=60, now=16.0)
    assert index.export_failed(exp.id, "down", 4, 2.0, 5.0, now=16.0) == "pending"
    assert index.list_exports()[0]["next_attempt_at"] == 21.0  # capped at 5 s
    index.claim_exports(10, lease_s=60, now=21.0)
    assert index.export_failed(exp.id, "down", 4, 2.0, 5.0, now=21.0) == "dead"
    assert [e["id"] for e in index.list_exports(dead_only=True)] == [exp.id]
    assert index.claim_exports(10, lease_s=60, now=1e9) == []
    assert index.retry_export(exp.id)
    [again] = index.claim_exports(10, lease_s=60)
    index.export_done(again.id)
    assert index.list_exports()[0]["state"] == "done"
    assert not index.retry_export(exp.id)  # delivered exports stay delivered


def test_exports_claimed_by_kind_for_separate_senders(tmp_path):
    """The verdict sender never takes a picture, the picture sender only pictures."""
    index = Index(f"sqlite:///{tmp_path / 'i.db'}")
    _record(index, "1.1", now=0.0)
    index.assemble_due(now=5.0)
    job = index.claim_job("w", lease_s=30, now=5.0)
    kinds = ["1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.88.34",
             "1.2.840.10008.5.1.4.1.1.7", "ORU^R01"]
    index.complete_job(job, [{"analysis": "a", "state": "current", "priority": "ROUTINE",
                              "summary": {}, "exports": [
                                  {"destination": "pacs", "sop_uid": f"9.{n}", "sop_class_uid": k,
                                   "series_uid": "", "path": f"r/{n}"}
                                  for n, k in enumerate(kinds)]}], now=6.0)
    pictures = (kinds[0], kinds[2])
    verdicts = index.claim_exports(10, 60, now=7.0, classes=pictures, exclude=True)
    assert [e.sop_class_uid for e in verdicts] == [kinds[1], kinds[3]]
    assert [e.sop_class_uid for e in index.claim_exports(10, 60, now=7.0, classes=pictures)
            ] == [kinds[0], kinds[2]]
    assert index.claim_exports(10, 60, now=7.0) == []  # all leased


def test_postgres_dialect_uses_skip_locked():
    d = PostgresDialect()
    assert d.sql("SELECT 1 WHERE a = ? AND b = ?") == "SELECT 1 WHERE a = %s AND b = %s"
    assert "SKIP LOCKED" in d.skip_locked and not d.single_process


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "a" / "b" / "x.dcm"
    write_atomic(target, [b"abc", b"def"])
    assert target.read_bytes() == b"abcdef"
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]
    try:  # a write that fails half-way leaves nothing behind
        write_atomic(tmp_path / "a" / "y.dcm", [b"abc", memoryview(b"x" * 10), 42])
    except TypeError:
        pass
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]
    spool = Spool(tmp_path / "s")
    (tmp_path / "s" / ".left.tmp").write_bytes(b"half")
    assert spool.sweep_temporaries() == 1
    assert safe_name("1.2.840.1") == "1.2.840.1" and safe_name("../etc") .startswith("x")


def test_directory_fsyncs_are_shared_but_never_skipped(tmp_path, monkeypatch):
    """Concurrent writers share directory fsyncs; each one's sync starts after its rename."""
    import threading
    import time

    import dicom_gateway.spool as spool_mod

    syncs: list[tuple[float, float]] = []
    real = spool_mod._fsync_dir

    def slow_sync(path):
        start = time.monotonic()
        time.sleep(0.005)
        real(path)
        syncs.append((start, time.monotonic()))

    monkeypatch.setattr(spool_mod, "_fsync_dir", slow_sync)
    renamed: dict[int, tuple[float, float]] = {}
    real_replace = spool_mod.os.replace

    def write(i):
        target = tmp_path / f"{i}.dcm"
        spool_mod.write_atomic(target, b"x" * 100)
        renamed[i] = (target.stat().st_mtime, time.monotonic())

    def replace(src, dst):
        real_replace(src, dst)
        replace_times[str(dst)] = time.monotonic()

    replace_times: dict[str, float] = {}
    monkeypatch.setattr(spool_mod.os, "replace", replace)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(list(tmp_path.glob("*.dcm"))) == 30
    assert len(syncs) < 30  # shared
    for i, (_mtime, returned) in renamed.items():
        at = replace_times[str(tmp_path / f"{i}.dcm")]
        assert any(at <= start and end <= returned for start, end in syncs), i
