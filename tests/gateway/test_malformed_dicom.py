"""Malformed DICOM (tests/malformed corpus) over C-STORE and through every file-reading path:
failure statuses or clean errors, no crash, no stuck association, nothing half-stored."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from dicom_gateway.header import Unparsable, parse_header
from dicom_gateway.runtime import Gateway
from dicom_gateway.scu import echo, send_files
from tests.support.gateway_helpers import gateway_settings, settings_data, settings_env
from tests.support.malformed import EXPECTED, build_corpus, good_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_corpus_has_every_kind_of_damage(tmp_path):
    corpus = build_corpus(tmp_path)
    assert set(corpus) >= {"truncated_header", "truncated_pixels", "wrong_length", "bad_vr",
                           "no_meta", "wrong_meta_syntax", "unknown_sop_class", "huge_element",
                           "wrong_ts_declared"}
    for kind, path in corpus.items():
        if EXPECTED[kind] == "failure" and kind != "no_meta":
            with pytest.raises(Unparsable):
                parse_header(path.read_bytes())
    parse_header(corpus["unknown_sop_class"].read_bytes())
    parse_header(good_file(tmp_path / "g").read_bytes())


def test_c_store_of_the_corpus_gets_failure_statuses_on_one_live_association(tmp_path):
    corpus = build_corpus(tmp_path / "corpus")
    good = good_file(tmp_path / "good")
    wire = [p for k, p in corpus.items() if k != "no_meta"]  # the meta never goes on the wire
    with Gateway(gateway_settings(tmp_path, quiet=30)) as gw:
        results = dict(send_files("127.0.0.1", gw.port, "HAIDANG", "STORESCU", [*wire, good]))
        for kind, path in corpus.items():
            if kind == "no_meta":
                continue
            status = results[path]
            if EXPECTED[kind] == "failure":
                assert status == "status 0xC000", (kind, status)
            else:
                assert status is None, (kind, status)
        assert results[good] is None  # same association, after all the garbage
        assert echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]
        stored = sorted(p for p in gw.spool.root.rglob("*") if p.is_file())
        assert len(stored) == gw.index.counts()["instances"] == 2
        for p in stored:
            assert not p.name.startswith(".")
            pydicom.dcmread(p).PixelData  # noqa: B018 - complete files only


def test_spool_reindex_skips_broken_files_and_starts(tmp_path):
    corpus = build_corpus(tmp_path / "corpus")
    settings = gateway_settings(tmp_path, quiet=30)
    target = Path(settings.gateway.spool_dir) / "instances" / "1.2.3" / "4.5.6"
    target.mkdir(parents=True)
    for kind, path in corpus.items():
        shutil.copy(path, target / f"{kind}.dcm")
    shutil.copy(good_file(tmp_path / "good"), target / "good.dcm")
    with Gateway(settings) as gw:
        assert echo("127.0.0.1", gw.port, "HAIDANG", "STORESCU")[0]
        indexed = {Path(p).stem for p in gw.index.indexed_paths()}
        assert indexed == {"good", "unknown_sop_class"}, indexed


def test_haidang_send_reports_each_bad_file_without_a_traceback(tmp_path):
    corpus = build_corpus(tmp_path / "corpus")
    data = settings_data(tmp_path, quiet=30)
    with Gateway(gateway_settings(tmp_path, quiet=30, port=data["gateway"]["port"])) as gw:
        res = subprocess.run([sys.executable, "-m", "haidang", "send", "--aet", "STORESCU",
                              str(tmp_path / "corpus")], cwd=REPO, env=settings_env(data),
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 1
        assert "Traceback" not in res.stderr, res.stderr[-2000:]
        failed = {line.split()[1].rstrip(":") for line in res.stderr.splitlines()
                  if line.startswith("FAILED")}
        expected_failures = {str(p) for k, p in corpus.items() if EXPECTED[k] == "failure"}
        assert failed == expected_failures, res.stderr
        assert f"sent 1/{len(corpus)}" in res.stdout
        assert gw.index.counts()["instances"] == 1


def test_preprocessing_and_training_reader_fail_cleanly(tmp_path):
    from serving.imaging.preprocess import PreprocessError, dicom_to_unit
    from training.data import DataError, load_dicom_folder

    clean = (PreprocessError, DataError, InvalidDicomError)
    corpus = build_corpus(tmp_path / "corpus")
    for kind, path in corpus.items():
        try:
            unit = dicom_to_unit(pydicom.dcmread(path))
            assert unit.ndim == 2 and float(unit.min()) >= 0 and float(unit.max()) <= 1, kind
        except clean:
            pass
        except Exception as exc:  # noqa: BLE001 - pydicom's own read errors are clean too
            assert type(exc).__module__.startswith("pydicom"), (kind, repr(exc))
        folder = tmp_path / "folders" / kind
        folder.mkdir(parents=True)
        shutil.copy(path, folder / "x.dcm")
        (folder / "labels.csv").write_text("path,label\nx.dcm,pneumonia\n")
        try:
            images = load_dicom_folder(folder, folder / "labels.csv")
            assert len(images) == 1
        except clean:
            pass
