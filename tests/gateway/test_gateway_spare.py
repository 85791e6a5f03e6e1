"""Temporary files made ahead (``Spool.spare``): used for the next instance, never left
behind when an association ends, swept after a crash, never visible as an instance."""

from __future__ import annotations

import os
import time

from dicom_gateway.runtime import Gateway
from dicom_gateway.spool import Spool, write_atomic
from haidang.testbed.studies import make_study
from tests.support.gateway_helpers import gateway_settings
from tests.support.pacs import storescu


def test_spare_file_becomes_the_instance(tmp_path):
    spool = Spool(tmp_path / "spool")
    spare = spool.spare()
    assert spare is not None and spare.path.parent == spool.incoming
    path = spool.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    write_atomic(path, [b"head", b"body"], True, spare)
    assert path.read_bytes() == b"headbody"
    assert not spare.path.exists() and list(spool.incoming.iterdir()) == []
    spare.discard()  # already used: nothing to do
    assert path.exists()


def test_unused_spare_is_discarded_and_a_crash_leftover_is_swept(tmp_path):
    spool = Spool(tmp_path / "spool")
    unused = spool.spare()
    unused.discard()
    assert list(spool.incoming.iterdir()) == []
    left = spool.spare()  # as if the process died holding it
    os.close(left.fd)
    assert spool.sweep_temporaries() == 1
    assert list(spool.incoming.iterdir()) == []


def test_associations_leave_no_temporary_files(tmp_path):
    _, files = make_study(["ct", "mr", "us_rle"], tmp_path / "send")
    with Gateway(gateway_settings(tmp_path, quiet=60)) as gw:
        res = storescu(files[:2], gw.port, "HAIDANG")
        assert res.returncode == 0, res.stderr
        res = storescu(files[:2], gw.port, "HAIDANG")  # duplicates: the spare goes unused
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 5
        while any(gw.spool.incoming.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)  # the association thread discards its spare as it ends
        assert list(gw.spool.incoming.iterdir()) == []
        assert gw.index.counts()["instances"] == 2
        stored = sorted(p.name for p in (gw.spool.root / "instances").rglob("*"))
        assert not [n for n in stored if n.endswith(".tmp")]
