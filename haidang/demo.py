"""``haidang demo``: the whole imaging path on this machine, in about a minute.

Starts the embedded stack in this process (gateway + in-process model + worklist page),
Orthanc as the PACS when it is installed (otherwise results go to a local archive
folder), sends the demo studies in ``datasets/samples/demo`` with a DICOM client (real
adult chest radiographs, and studies the intended-use gate must refuse: a lateral view,
a child, a CT slice, a blank image), waits for the results, and prints one line per
study with its verdict, or the reason it was not analysed, and its time to flag, plus
the worklist URL. ``--json`` prints the same as one JSON object.

Time to flag = result stored in the PACS (the gateway's write-back got Success) minus the
moment the last instance of the study got Success, minus the quiet period the gateway
waits to know a study is complete.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from haidang.testbed.orthanc import WEB_VIEWER, Orthanc, free_port, orthanc_binary

REPO = Path(__file__).resolve().parents[1]
QUIET_PERIOD_S = 0.5
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR: the AI report


def register(sub) -> None:
    p = sub.add_parser("demo", help="send the sample studies through AI triage, show the results")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--samples", help="folder of DICOM studies to send "
                                     "(default datasets/samples/demo)")
    p.add_argument("--workdir", help="where the demo keeps its spool, database, PACS and archive "
                                     "(default: a new folder under var/demo)")
    p.add_argument("--keep-running", action="store_true",
                   help="keep the gateway, worklist and PACS up until Ctrl-C")
    p.add_argument("--no-orthanc", action="store_true", help="write results to a local archive "
                                                             "even when Orthanc is installed")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for results")
    p.add_argument("--interval", type=float, default=0.5,
                   help="seconds between studies, as from a modality (0: all at once, which "
                        "measures queueing rather than time to flag)")
    p.set_defaults(handler=run_demo)


class WebThread:
    def __init__(self, app, port: int):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="haidang-web", daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _models_dir(configured: Path) -> Path:
    from dicom_gateway.analyses.cxr_pneumonia import MODEL

    if (configured / MODEL / "current").is_file():
        return configured
    shipped = REPO / "models"
    if (shipped / MODEL / "current").is_file():
        return shipped
    raise SystemExit(f"haidang demo: no {MODEL} model under {configured} or {shipped}; "
                     "run from the repository root, or train and register one with "
                     f"`haidang train {MODEL}`")


def demo_settings(workdir: Path, models_dir: Path, pacs: Orthanc | None, base=None):
    from haidang.ground.settings import Settings

    data = base.model_dump(mode="json") if base is not None else {}
    data["gateway"] = {
        **data.get("gateway", {}), "ae_title": "HAIDANG", "host": "127.0.0.1",
        "port": free_port(), "allowed_sources": [], "quiet_period_s": QUIET_PERIOD_S,
        "spool_dir": str(workdir / "spool"), "database_url": f"sqlite:///{workdir / 'haidang.db'}",
        "min_free_bytes": 16 * 1024 * 1024, "tls": None,
    }
    data["destinations"] = [] if pacs is None else [
        {"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}]
    # Every image goes to the chest analysis: its intended-use gate, not the route, decides
    # what the model may score, and every refused study gets its reason in the PACS.
    data["routes"] = [{"name": "all-images", "match": {}, "analyses": ["cxr-pneumonia"]}]
    data["serving"] = {**data.get("serving", {}), "url": None, "models_dir": str(models_dir),
                       "host": "127.0.0.1", "port": free_port()}
    data["export"] = {**data.get("export", {}), "base_delay_s": 0.5, "max_delay_s": 5.0}
    data["notify"] = {**data.get("notify", {})}
    # The worklist data are patient results: even the demo serves them behind a sign-in
    # (a fresh user per run, see run_demo) and programs behind a fresh API key.
    data["security"] = {**data.get("security", {}), "development": False,
                        "api_keys": [secrets.token_urlsafe(18)],
                        "audit_log": str(workdir / "audit.log")}
    if pacs is not None and pacs.plugins:  # the worklist's "open images": Orthanc's web viewer
        data["worklist"] = {**data.get("worklist", {}), "viewer_url":
                            f"{pacs.url}/web-viewer/app/viewer.html?series={{OrthancSeriesID}}"}
    return Settings.model_validate(data)


def _studies(files: list[Path]) -> dict[str, list[Path]]:
    import pydicom

    studies: dict[str, list[Path]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM: skip (README, scripts)
            continue
        studies.setdefault(str(ds.StudyInstanceUID), []).append(f)
    return studies


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return round(float(np.percentile(values, q)), 1)


def _make_app(settings, gateway):
    try:
        from haidang.web import create_app

        return create_app(settings, gateway)
    except Exception as exc:  # noqa: BLE001 - the demo still shows the worklist
        logging.getLogger("haidang.demo").warning("full web app unavailable (%s); serving the "
                                                  "worklist only", exc)
        from dicom_gateway.worklist import worklist_app

        return worklist_app(settings, lambda: gateway.index)


def run_demo(args) -> int:
    from dicom_gateway.runtime import Gateway
    from dicom_gateway.scu import send_files
    from dicom_gateway.signin import SignIn
    from dicom_gateway.worklist import worklist_rows
    from haidang.ground.settings import load_settings

    if str(args.log_level).upper() == "INFO":  # the default: keep the table readable
        logging.getLogger().setLevel(logging.WARNING)
    base = load_settings(args.config) if args.config else None
    configured = Path(base.serving.models_dir) if base else Path("models")
    models_dir = _models_dir(configured)
    samples = Path(args.samples) if args.samples else REPO / "datasets" / "samples" / "demo"
    studies = _studies(sorted(samples.rglob("*.dcm")))
    if not studies:
        print(f"haidang demo: no DICOM files under {samples}", file=sys.stderr)
        return 2
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        (REPO / "var" / "demo").mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"),
                                        dir=REPO / "var" / "demo"))

    binary = None if args.no_orthanc else orthanc_binary()
    viewer = [WEB_VIEWER] if WEB_VIEWER.is_file() else []
    pacs = Orthanc(workdir / "orthanc", binary=binary, name="haidang-demo-pacs",
                   plugins=viewer) if binary else None
    archive = workdir / "archive"
    gateway = web = None
    try:
        if pacs:
            pacs.start()
        settings = demo_settings(workdir, models_dir, pacs, base)
        from dicom_gateway.analyses.cxr_pneumonia import warm_up

        warm_up(settings)  # load the model, fonts and builders before the clock starts
        gateway = Gateway(settings).start()
        password = secrets.token_urlsafe(12)
        SignIn(settings, lambda: gateway.index).add_user("demo", password, "Bác sĩ demo")
        web = WebThread(_make_app(settings, gateway), settings.serving.port)
        web.start()

        sent_at: dict[str, float] = {}
        send_errors = []
        for uid, files in studies.items():
            started = time.monotonic()
            results = send_files("127.0.0.1", gateway.port, settings.gateway.ae_title,
                                 "HAIDANG_DEMO", files)
            sent_at[uid] = time.time()
            send_errors += [f"{f.name}: {why}" for f, why in results if why]
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))

        def finished() -> dict[str, dict]:
            rows = {r.study_uid: asdict(r) for r in worklist_rows(gateway.index, settings)}
            final = ("in-pacs", "done", "failed")
            return rows if all(rows.get(u, {}).get("status") in final for u in studies) else {}

        deadline = time.monotonic() + args.timeout
        rows: dict[str, dict] = {}
        while time.monotonic() < deadline and not rows:
            rows = finished()
            time.sleep(0.1)
        rows = rows or {r.study_uid: asdict(r) for r in worklist_rows(gateway.index, settings)}

        report = _report(studies, rows, sent_at, settings, pacs, archive, web, send_errors,
                         gateway)
        report["worklist_sign_in"] = {"username": "demo", "password": password}
        report["interval_s"] = args.interval
        if pacs is None:
            _archive_results(settings, archive)
        if args.json:
            print(json.dumps(report, ensure_ascii=False))
        else:
            _print_table(report)
            if not args.keep_running:
                print("(the worklist and PACS stop with the demo; `haidang demo --keep-running` "
                      "keeps them up)")
        if args.keep_running:
            print("Ctrl-C stops the demo.")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        complete = report["studies_analysed"] == report["studies_sent"] and not send_errors
        return 0 if complete else 1
    finally:
        if web:
            web.stop()
        if gateway:
            gateway.stop()
        if pacs:
            pacs.stop()


def _report(studies, rows, sent_at, settings, pacs, archive, web, send_errors, gateway) -> dict:
    quiet = settings.gateway.quiet_period_s
    table = []
    ttf: list[float] = []
    for uid, files in studies.items():
        row = rows.get(uid, {})
        delivery = gateway.index.study_delivery(uid)
        flagged_at = delivery.last_done_at if delivery.exports and \
            delivery.exports == delivery.exports_done else None
        if pacs is None:
            flagged_at = delivery.result_at
        ms = round(1000 * max(0.0, flagged_at - sent_at[uid] - quiet), 1) if flagged_at else None
        if ms is not None:
            ttf.append(ms)
        summary = _summary(gateway.index, uid)
        table.append({
            "study": files[0].stem, "study_uid": uid, "instances": len(files),
            "modality": row.get("modality"), "analysis": row.get("analysis"),
            "verdict": row.get("verdict"), "probability": row.get("probability"),
            "analysed": summary.get("verdict") != "not-analysed",
            "reason": summary.get("reason", ""), "reason_vi": summary.get("reason_vi", ""),
            "reason_en": summary.get("reason_en", ""),
            "probabilities": summary.get("probabilities") or {},
            "priority": row.get("priority"), "status": row.get("status"),
            "time_to_flag_ms": ms,
        })
    objects = sum(gateway.index.study_delivery(u).done_by_sop_class.get(SR_SOP_CLASS, 0)
                  for u in studies)
    if pacs is None:
        objects = len([r for r in table
                       if r["verdict"] not in (None, "not-applicable", "not-analysed")])
    return {
        "studies_sent": len(studies),
        "studies_analysed": len([r for r in table if r["status"] in ("in-pacs", "done")]),
        "studies_refused": len([r for r in table if not r["analysed"]]),
        "reports_written": objects,
        "flagged": len([r for r in table if r["priority"] == "URGENT"]),
        "time_to_flag_ms": {"p50": _percentile(ttf, 50), "p95": _percentile(ttf, 95),
                            "max": max(ttf) if ttf else None},
        "quiet_period_s": quiet,
        "pacs": f"Orthanc {pacs.url}" if pacs else None,
        "archive": None if pacs else str(archive),
        "worklist_url": f"{web.url}/worklist",
        "send_errors": send_errors,
        "studies": table,
    }


def _summary(index, study_uid: str) -> dict:
    """The stored result of the chest analysis: its verdict, or why it was not analysed."""
    found = index.query("SELECT summary FROM results WHERE study_uid = ? AND state = 'current' "
                        "ORDER BY id DESC LIMIT 1", (study_uid,))
    return json.loads(found[0][0]) if found else {}


def _archive_results(settings, archive: Path) -> None:
    """Without a PACS, results stay in the spool; copy them where a person finds them."""
    results = Path(settings.gateway.spool_dir) / "results"
    if results.is_dir():
        shutil.copytree(results, archive, dirs_exist_ok=True)
    from dicom_gateway.spool import thumbnail_dir

    ai = thumbnail_dir(settings.gateway.spool_dir)
    if ai.is_dir():
        shutil.copytree(ai, archive / "summaries", dirs_exist_ok=True)


VERDICT_VI = {"pneumonia": "NGHI NGỜ VIÊM PHỔI", "normal": "không viêm phổi",
              "abnormal": "BẤT THƯỜNG", "no urgent finding": "không có dấu hiệu khẩn"}


def _shown(r: dict) -> str:
    if not r["analysed"]:
        return f"not analysed: {r['reason_en']} / không phân tích: {r['reason_vi']}"
    verdict = r["verdict"] or "-"
    outputs = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["probabilities"].items())
    return f"{verdict} / {VERDICT_VI.get(verdict, verdict)}" + (f" ({outputs})" if outputs else "")


def _print_table(report: dict) -> None:
    print(f"{'study':24} {'mod':4} {'priority':8} {'prob':>6} {'time to flag':>12}  "
          "AI verdict / kết luận, or why not analysed / lý do không phân tích")
    for r in sorted(report["studies"], key=lambda r: (r["priority"] != "URGENT",
                                                      not r["analysed"], r["study"])):
        prob = "-" if r["probability"] is None else f"{100 * r['probability']:.1f}%"
        ttf = "-" if r["time_to_flag_ms"] is None else f"{r['time_to_flag_ms'] / 1000:.2f} s"
        print(f"{r['study'][:24]:24} {(r['modality'] or '-'):4} {(r['priority'] or '-'):8} "
              f"{prob:>6} {ttf:>12}  {_shown(r)}")
    t = report["time_to_flag_ms"]
    print(f"\n{report['studies_sent']} studies sent, {report['reports_written']} AI reports "
          f"written, {report['flagged']} flagged URGENT, {report['studies_refused']} not "
          f"analysed (outside the model's intended use); time to flag p50 {t['p50']} ms, "
          f"p95 {t['p95']} ms (after the {report['quiet_period_s']} s quiet period)")
    print(f"PACS: {report['pacs']}" if report["pacs"] else f"archive: {report['archive']}")
    login = report["worklist_sign_in"]
    print(f"worklist: {report['worklist_url']} (sign in as {login['username']}, password "
          f"{login['password']})")
    for err in report["send_errors"]:
        print(f"send error: {err}")
