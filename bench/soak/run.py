"""Crash soak: dcmtk storescu streams studies while the gateway is SIGKILLed and restarted.

Each round streams a slice of the corpus over several parallel associations (one dcmtk
``storescu`` process each) to a ``python -m haidang gateway`` subprocess, and kills the
gateway with SIGKILL at a random moment: after a random number of acknowledged instances
(mid-stream), or, in some rounds, after the slice is sent (while studies are assembled,
processed or exported). The gateway is restarted at once; instances that were not
acknowledged are re-sent later, as a PACS would. After the last round everything left is
sent and the gateway runs until its queue is empty. Then:

* every instance storescu saw answered with Success is in the index and its spool file
  holds the data set byte for byte (the bytes after the file meta header);
* every study is processed, with exactly one current result, and that result (its SR)
  is in Orthanc;
* "duplicates written to PACS" counts result objects in Orthanc beyond one per study.

    python -m bench.soak.run --rounds 20 --instances 500 [--per-study 10] [--assocs 3]

``tests/product/test_soak.py`` runs a short form (3 rounds, ~60 instances) in CI.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from haidang.ground.processes import stop_process
from haidang.testbed.dcmtk import dcmtk, dcmtk_env, wait_for_port
from haidang.testbed.orthanc import Orthanc, free_port

REPO = Path(__file__).resolve().parents[2]

SUCCESS_LINE = "Received Store Response (Success)"


@dataclass
class SoakResult:
    rounds: int = 0
    instances: int = 0
    acknowledged: int = 0
    lost: int = 0
    byte_identical: int = 0
    studies: int = 0
    studies_processed: int = 0
    studies_one_current: int = 0
    current_in_pacs: int = 0
    pacs_results: int = 0
    duplicates_in_pacs: int = 0
    superseded_in_pacs: int = 0
    sends: int = 0
    kills_mid_stream: int = 0
    kills_after_stream: int = 0
    seconds: float = 0.0
    audit_records: int = 0
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("rounds (SIGKILL + restart)", self.rounds),
            ("  killed mid-stream / after stream", f"{self.kills_mid_stream} / "
                                                  f"{self.kills_after_stream}"),
            ("instances in corpus", self.instances),
            ("storescu runs (associations)", self.sends),
            ("instances acknowledged (Success)", self.acknowledged),
            ("instances lost", self.lost),
            ("acknowledged, spool byte-identical", self.byte_identical),
            ("studies", self.studies),
            ("studies processed", self.studies_processed),
            ("studies with exactly one current result", self.studies_one_current),
            ("current results in PACS", self.current_in_pacs),
            ("result objects in PACS", self.pacs_results),
            ("duplicates written to PACS", self.duplicates_in_pacs),
            ("  of which superseded (study re-opened)", self.superseded_in_pacs),
            ("audit records (chain verified)", self.audit_records),
            ("wall time (s)", f"{self.seconds:.1f}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def make_corpus(dest: Path, n: int, per_study: int) -> list[Path]:
    """``n`` fresh-UID copies of pydicom's CT_small (39 kB), ``per_study`` per study."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    # dcmtk drops data set trailing padding when it sends; without it the wire bytes are the file's
    if 0xFFFCFFFC in template:
        del template[0xFFFCFFFC]
    dest.mkdir(parents=True, exist_ok=True)
    files = []
    study = series = None
    for i in range(n):
        if i % per_study == 0:
            study, series = generate_uid(), generate_uid()
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i % per_study + 1
        ds.PatientID, ds.PatientName = "HD-SOAK-0001", "TRAN^THI SOAK"
        out = dest / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(out, enforce_file_format=True)
        files.append(out)
    return files


def dataset_bytes(data: bytes) -> bytes:
    """The bytes after the file meta header (group length is the first meta element)."""
    assert data[128:132] == b"DICM" and data[132:136] == b"\x02\x00\x00\x00"
    (group_len,) = struct.unpack("<I", data[140:144])
    return data[144 + group_len:]


class GatewayProcess:
    """``python -m haidang gateway`` with settings in the environment; killed with SIGKILL."""

    def __init__(self, env: dict, port: int, log: Path):
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "haidang", "gateway"], cwd=REPO,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, 30)


class Stream:
    """One storescu association sending files; parses its verbose output as it comes."""

    def __init__(self, files: list[Path], port: int, counter: list[int], lock: threading.Lock):
        self.files = files
        self.acked: list[Path] = []
        self.proc = subprocess.Popen(
            [dcmtk("storescu"), "--required", "-xe", "-v", "--no-halt", "-to", "10", "-ta", "10",
             "-td", "10", "-aet", "STORESCU", "-aec", "HAIDANG", "127.0.0.1", str(port),
             *map(str, files)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
        self._thread = threading.Thread(target=self._read, args=(counter, lock), daemon=True)
        self._thread.start()

    def _read(self, counter, lock) -> None:
        current = None
        for line in self.proc.stdout:
            m = re.search(r"Sending file: (\S+)", line)
            if m:
                current = Path(m.group(1))
            elif SUCCESS_LINE in line and current is not None:
                self.acked.append(current)
                current = None
                with lock:
                    counter[0] += 1

    def done(self) -> bool:
        return self.proc.poll() is not None

    def wait(self) -> list[Path]:
        self.proc.wait(120)
        self._thread.join(30)
        return self.acked


def stream_slice(files: list[Path], port: int, assocs: int, kill_after: int | None,
                 gateway: GatewayProcess, rng: random.Random) -> tuple[list[Path], bool]:
    """Send ``files`` over ``assocs`` parallel associations; SIGKILL the gateway after
    ``kill_after`` acknowledgements (None: let the slice finish). Returns (acked, killed)."""
    counter, lock = [0], threading.Lock()
    streams = [Stream(files[i::assocs], port, counter, lock) for i in range(assocs)
               if files[i::assocs]]
    killed = False
    while not all(s.done() for s in streams):
        if kill_after is not None and counter[0] >= kill_after:
            time.sleep(rng.uniform(0, 0.02))  # land anywhere inside the next C-STORE
            gateway.kill()
            killed = True
            break
        time.sleep(0.002)
    acked = [f for s in streams for f in s.wait()]
    return acked, killed


def run_soak(workdir: Path, rounds: int = 20, instances: int = 500, per_study: int = 10,
             assocs: int = 3, quiet_s: float = 4.0, seed: int = 7, orthanc: Orthanc | None = None,
             progress=print) -> SoakResult:
    from dicom_gateway.index import Index

    rng = random.Random(seed)
    res = SoakResult(instances=instances)
    t0 = time.perf_counter()
    own_pacs = orthanc is None
    if own_pacs:
        orthanc = Orthanc(workdir / "orthanc")
        orthanc.start()
    try:
        files = make_corpus(workdir / "send", instances, per_study)
        port = free_port()
        data = {
            "gateway": {"ae_title": "HAIDANG", "host": "127.0.0.1", "port": port,
                        "allowed_sources": [{"ae_title": "STORESCU", "host": "127.0.0.1"}],
                        "quiet_period_s": quiet_s, "spool_dir": str(workdir / "spool"),
                        "database_url": f"sqlite:///{workdir / 'haidang.db'}",
                        "min_free_bytes": 1024 * 1024},
            "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port}],
            "export": {"max_attempts": 50, "base_delay_s": 0.3, "max_delay_s": 2.0},
            "routes": [{"name": "all", "match": {}, "analyses": ["study-summary"]}],
            "security": {"audit_log": str(workdir / "audit.log")},
        }
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
        env.update({f"HAIDANG_{k.upper()}": json.dumps(v) for k, v in data.items()})
        gateway = GatewayProcess(env, port, workdir / "gateway.log")
        gateway.start()

        pending = list(files)
        acked: set[Path] = set()
        slice_size = max(2, -(-instances // rounds))
        for r in range(1, rounds + 1):
            chunk, pending = pending[:slice_size], pending[slice_size:]
            mid_stream = rng.random() < 0.8 and len(chunk) > 1
            kill_after = rng.randint(1, len(chunk) - 1) if mid_stream else None
            got, killed = stream_slice(chunk, port, assocs, kill_after, gateway, rng)
            res.sends += min(assocs, len(chunk))
            if not killed:  # the slice went through: kill while studies assemble/process/export
                time.sleep(rng.uniform(0, quiet_s + 1.0))
                gateway.kill()
                res.kills_after_stream += 1
            else:
                res.kills_mid_stream += 1
            acked.update(got)
            pending = [f for f in chunk if f not in acked] + pending  # re-sent after restart
            res.rounds = r
            gateway.start()
            progress(f"round {r}/{rounds}: {len(got)}/{len(chunk)} acknowledged, killed "
                     f"{'mid-stream' if killed else 'after the stream'}; {len(acked)} "
                     f"acknowledged so far")
        for _ in range(10):  # the rest, without kills
            if not pending:
                break
            got, _ = stream_slice(pending, port, assocs, None, gateway, rng)
            res.sends += min(assocs, len(pending))
            acked.update(got)
            pending = [f for f in pending if f not in acked]
        if pending:
            res.problems.append(f"{len(pending)} instances never acknowledged")

        index = Index(data["gateway"]["database_url"])
        try:
            _wait_quiet(index, timeout=120 + 0.5 * instances)
            _verify(index, Path(data["gateway"]["spool_dir"]), acked, orthanc, res)
            from haidang.ground.audit import verify_chain

            res.audit_records, audit_problems = verify_chain(workdir / "audit.log")
            res.problems += [f"audit trail: {p}" for p in audit_problems]
        finally:
            index.close()
            gateway.stop()
    finally:
        if own_pacs:
            orthanc.stop()
    res.seconds = time.perf_counter() - t0
    return res


def _wait_quiet(index, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c = index.counts()
        busy = sum(c.get(k, 0) for k in ("studies.receiving", "studies.assembled",
                                          "studies.processing", "jobs.pending", "jobs.running",
                                          "exports.pending", "exports.sending"))
        if busy == 0:
            return
        time.sleep(0.5)
    raise TimeoutError(f"gateway still busy after {timeout:.0f} s: {index.counts()}")


def _verify(index, spool: Path, acked: set[Path], orthanc: Orthanc, res: SoakResult) -> None:
    res.acknowledged = len(acked)
    studies: dict[str, int] = {}
    for f in sorted(acked):
        sop = f.stem
        row = index.query("SELECT path, study_uid FROM instances WHERE sop_uid = ?", (sop,))
        if not row:
            res.lost += 1
            res.problems.append(f"acknowledged instance {sop} is not in the index")
            continue
        path, study = row[0]
        stored = spool / path
        if not stored.is_file():
            res.lost += 1
            res.problems.append(f"acknowledged instance {sop}: spool file {path} missing")
            continue
        if dataset_bytes(stored.read_bytes()) == dataset_bytes(f.read_bytes()):
            res.byte_identical += 1
        else:
            res.problems.append(f"instance {sop}: spool bytes differ from the file sent")
        studies[study] = studies.get(study, 0) + 1
    all_studies = {uid for (uid,) in index.query("SELECT study_uid FROM studies")}
    res.studies = len(all_studies)
    for uid in sorted(all_studies):
        st = index.study(uid)
        if st["state"] == "processed":
            res.studies_processed += 1
        else:
            res.problems.append(f"study {uid} is {st['state']}, not processed")
        results = index.results(uid)
        current = [r for r in results if r["state"] == "current"]
        if len(current) == 1:
            res.studies_one_current += 1
            n = current[0]["summary"].get("instances")
            if n is not None and n != st["instance_count"]:
                res.problems.append(f"study {uid}: current result covers {n} of "
                                    f"{st['instance_count']} instances")
        else:
            res.problems.append(f"study {uid}: {len(current)} current results")
        exports = index.query(
            "SELECT e.sop_uid, r.state, e.state FROM exports e JOIN results r "
            "ON r.id = e.result_id WHERE e.study_uid = ?", (uid,))
        current_sops = {sop for sop, rstate, _ in exports if rstate == "current"}
        superseded_sops = {sop for sop, rstate, _ in exports if rstate == "superseded"}
        in_pacs = {i["MainDicomTags"]["SOPInstanceUID"]
                   for i in orthanc.find_instances(StudyInstanceUID=uid)}
        res.pacs_results += len(in_pacs)
        if current_sops and current_sops <= in_pacs:
            res.current_in_pacs += 1
        else:
            res.problems.append(f"study {uid}: current result not in the PACS")
        extra = len(in_pacs) - len(current_sops & in_pacs)
        res.duplicates_in_pacs += max(0, extra)
        res.superseded_in_pacs += len(superseded_sops & in_pacs)
        unknown = in_pacs - current_sops - superseded_sops
        if unknown:
            res.problems.append(f"study {uid}: {len(unknown)} objects in the PACS that no "
                                "result of the index explains")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--instances", type=int, default=500)
    ap.add_argument("--per-study", type=int, default=10)
    ap.add_argument("--assocs", type=int, default=3, help="parallel associations per round")
    ap.add_argument("--quiet", type=float, default=4.0, help="gateway quiet period (s)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", help="work directory to keep (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="haidang-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = run_soak(work, args.rounds, args.instances, args.per_study, args.assocs,
                       args.quiet, args.seed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res.__dict__, indent=2) if args.json else res.table())
    for p in res.problems[:50]:
        print("PROBLEM:", p, file=sys.stderr)
    return 0 if not res.problems and res.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
