"""How much of the national references the knowledge base knows, and what it costs.

    PYTHONPATH=. .venv/bin/python -m bench.cdss.knowledge            # ~1 minute
    PYTHONPATH=. .venv/bin/python -m bench.cdss.knowledge --no-server

Reports, on the shipped data (the same figures go to `knowledge.json`):
- recognition: names of QĐ 5948 and of the ANSM thesaurus (French, as written) the
  dictionary resolves, and the rows whose two sides are both recognised;
- recall: rows whose pair, prescribed by those names, draws a drug-drug alert (and at the
  reference's own severity, or stricter when another reference is stricter);
- alerts per prescription over the sample outpatient prescriptions
  (`tests/support/fixtures/cdss/prescriptions-outpatient.json`), as the native channel shows them;
- false alarms: contraindicated/major drug-drug alerts over every pair of common outpatient
  drugs (COMMON below), with the pairs listed so a pharmacist can judge them;
- cost: knowledge load time, check time per sample prescription, and (unless --no-server)
  a server started as `haidang serve` does: seconds to /readyz and its resident memory.
Recall here is measured on the references the knowledge base is built from: it shows that
nothing is lost between the sources and the alerts, not how it fares on an independent one.
Not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from serving.cdss import names
from serving.cdss.checks import CheckEngine, shown
from serving.cdss.icd import Icd10
from serving.cdss.knowledge import ANSM_SEVERITY, KnowledgeBase
from serving.cdss.models import SEVERITY_RANK, DrugLine, Prescription

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DATA = ROOT / "datasets"
SAMPLES = ROOT / "tests" / "support" / "fixtures" / "cdss" / "prescriptions-outpatient.json"
# Common outpatient drugs of Vietnamese hospitals (the essential-medicine classes a district
# hospital dispenses every day), as a prescriber writes them.
COMMON = """Paracetamol|Ibuprofen|Diclofenac|Meloxicam|Celecoxib|Aspirin|Clopidogrel|Amlodipin|
Nifedipin|Losartan|Telmisartan|Enalapril|Perindopril|Captopril|Bisoprolol|Metoprolol|
Propranolol|Hydroclorothiazid|Furosemid|Spironolacton|Indapamid|Atorvastatin|Rosuvastatin|
Simvastatin|Fenofibrat|Metformin|Gliclazid|Glimepirid|Sitagliptin|Insulin glargin|
Omeprazol|Esomeprazol|Pantoprazol|Lansoprazol|Famotidin|Domperidon|Metoclopramid|
Simethicon|Alverin|Drotaverin|Loperamid|Lactulose|Bisacodyl|Sucralfat|Amoxicilin|
Cefuroxim|Cefixim|Cefalexin|Azithromycin|Clarithromycin|Ciprofloxacin|Levofloxacin|
Doxycyclin|Metronidazol|Sulfamethoxazol|Nitrofurantoin|Fluconazol|Aciclovir|Oseltamivir|
Albendazol|Loratadin|Cetirizin|Fexofenadin|Clorpheniramin|Dexamethason|Prednisolon|
Methylprednisolon|Salbutamol|Budesonid|Montelukast|Theophylin|Acetylcystein|Ambroxol|
Bromhexin|Dextromethorphan|Levothyroxin|Thiamazol|Alopurinol|Colchicin|Glucosamin|
Diazepam|Alprazolam|Sertralin|Fluoxetin|Amitriptylin|Gabapentin|Pregabalin|Carbamazepin|
Valproat natri|Tramadol|Codein|Vitamin B1|Pyridoxin|Acid folic|Sắt fumarat|Calci carbonat|
Kali clorid|Magnesi sulfat|Warfarin|Digoxin|Nitroglycerin|Trimetazidin|Isosorbid mononitrat"""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _rx(*lines: str) -> Prescription:
    return Prescription(lines=[DrugLine(text=t) for t in lines])


def _pair_alert(engine: CheckEngine, lines: tuple[str, str], a: str, b: str):
    for alert in engine.check(_rx(*lines)).alerts:
        if alert.kind == "drug-drug" and {a, b} <= set(alert.drugs):
            return alert
    return None


def qd5948(kb: KnowledgeBase, engine: CheckEngine) -> dict:
    rows = _rows(DATA / "ddi-vn" / "qd5948-contraindicated-pairs.csv")
    side_names = sorted({r[k] for r in rows for k in ("HOAT_CHAT_1", "HOAT_CHAT_2")})
    known = {n for n in side_names if kb.resolve_name(n) or kb.qd5948_side(n)}
    both = alerted = at_severity = 0
    for row in rows:
        one, two = row["HOAT_CHAT_1"], row["HOAT_CHAT_2"]
        if one not in known or two not in known:
            continue
        both += 1
        a = _member(kb, kb.qd5948_side(one))
        b = _member(kb, kb.qd5948_side(two), not_this=a)
        line_a = one if kb.resolve_name(one) else kb.drug(a).name_vi
        line_b = two if kb.resolve_name(two) else kb.drug(b).name_vi
        alert = _pair_alert(engine, (line_a, line_b), a, b)
        alerted += alert is not None
        at_severity += alert is not None and alert.severity == "contraindicated"
    return {"names": len(side_names), "names_recognised": len(known), "rows": len(rows),
            "rows_both_recognised": both, "rows_alerted": alerted,
            "rows_alerted_contraindicated": at_severity}


def _member(kb: KnowledgeBase, keys, not_this: str | None = None) -> str:
    """The side's ingredient that carries the row (a combination's first, a class's first)."""
    drugs = [k for k in keys if not k.startswith("class:")]
    for tag in (k[6:] for k in keys if k.startswith("class:")):
        drugs += sorted(kb.class_members(tag))
    return next((k for k in drugs if k != not_this), drugs[0])


def ansm(kb: KnowledgeBase, engine: CheckEngine) -> dict:
    rows = _rows(DATA / "ddi-ansm" / "ansm_thesaurus_ddi_2020_10.csv")
    classes = {names.plain(c) for r in _rows(DATA / "ddi-ansm" /
                                             "ansm_substance_classes_2020_10.csv")
               for c in r["drug_classes"].split("|") if c.strip()}
    substances = sorted({r[k] for r in rows for k in ("main_drug", "plus_drug")
                         if names.plain(r[k]) not in classes})
    substances_known = {s for s in substances if kb.resolve_name(s)}
    both = alerted = at_severity = 0
    for row in rows:
        one, two = kb.ansm_side(row["main_drug"]), kb.ansm_side(row["plus_drug"])
        if not one or not two:
            continue
        both += 1
        pair = next(((a, b) for a in one for b in two if a != b), None)
        if pair is None:
            continue
        a, b = pair
        lines = (kb.drug(a).name_fr or a, kb.drug(b).name_fr or b)
        alert = _pair_alert(engine, lines, a, b)
        alerted += alert is not None
        # a row with several levels: at least its lowest (the others hold in conditions)
        want = min((ANSM_SEVERITY[names.plain(x)] for x in row["severity_levels"].split(" | ")),
                   key=SEVERITY_RANK.get)
        at_severity += alert is not None and SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[want]
    return {"substance_names": len(substances), "substance_names_recognised":
            len(substances_known), "rows": len(rows), "rows_both_recognised": both,
            "rows_alerted": alerted, "rows_alerted_at_or_above_ansm_level": at_severity}


def samples(engine: CheckEngine) -> dict:
    data = json.loads(SAMPLES.read_text(encoding="utf-8"))["prescriptions"]
    per = []
    for p in data:
        rx = Prescription(lines=[DrugLine(text=t) for t in p["lines"]],
                          diagnoses=p["diagnoses"], sex=p["sex"],
                          age_days=p["age_years"] * 365)
        alerts = engine.check(rx, channel="native").alerts
        per.append({"name": p["name"], "lines": len(p["lines"]), "alerts": len(alerts),
                    "kinds": [f"{a.kind}:{a.severity}" for a in alerts],
                    "unrecognised": sum(a.kind == "unrecognised-drug" for a in alerts)})
    return {"prescriptions": per,
            "alerts_per_prescription": statistics.mean(p["alerts"] for p in per)}


def false_alarms(kb: KnowledgeBase, engine: CheckEngine) -> dict:
    drugs = [n.strip() for n in COMMON.replace("\n", "").split("|")]
    unknown = [d for d in drugs if not kb.resolve_name(d)]
    pairs = flagged = by_class_only = 0
    listed = []
    for x, y in itertools.combinations([d for d in drugs if d not in unknown], 2):
        pairs += 1
        bad = [a for a in engine.check(_rx(x, y)).alerts if a.kind == "drug-drug"
               and a.severity in ("contraindicated", "major")]
        if bad:
            flagged += 1
            a, b = kb.drug(bad[0].drugs[0]), kb.drug(bad[0].drugs[1])
            named = any(len(i.a.split("/")) <= 2 and len(i.b.split("/")) <= 2
                        for i in kb.interactions(a, b)
                        if SEVERITY_RANK[i.severity] >= SEVERITY_RANK["major"])
            by_class_only += not named
            listed.append(f"{x} + {y}: {bad[0].severity}{'' if named else ' (class rule)'} "
                          f"({bad[0].source[:90]})")
    # A pair no reference names by its substances (only a class row does) is the kind an
    # independent "not known to interact" list may hold: the upper bound of false alarms.
    return {"drugs": len(drugs), "unrecognised": unknown, "pairs": pairs,
            "pairs_major_or_contraindicated": flagged, "rate": flagged / pairs,
            "pairs_flagged_only_by_class_rows": by_class_only,
            "rate_class_rows_only": by_class_only / pairs, "flagged": listed}


def cost(engine_samples: list[Prescription]) -> dict:
    t0 = time.perf_counter()
    kb = KnowledgeBase.load()
    t1 = time.perf_counter()
    icd = Icd10()
    t2 = time.perf_counter()
    engine = CheckEngine(kb, icd)
    cold = []
    for rx in engine_samples:
        start = time.perf_counter()
        engine.check(rx)
        cold.append((time.perf_counter() - start) * 1e6)
    warm = []
    for _ in range(200):
        for rx in engine_samples:
            start = time.perf_counter()
            engine.check(rx)
            warm.append((time.perf_counter() - start) * 1e6)
    warm.sort()
    return {"kb_load_s": round(t1 - t0, 3), "icd_load_s": round(t2 - t1, 3),
            "check_cold_us_max": round(max(cold)), "check_warm_us_p50":
            round(warm[len(warm) // 2]), "check_warm_us_p99": round(warm[int(len(warm) * .99)]),
            "this_process_max_rss_mb": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def server() -> dict:
    """Seconds from start to /readyz 200, and resident memory, of a 1-worker server started
    the way `haidang serve` starts it (bench/cdss/serve.py)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="haidang-bench-kb-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAIDANG_")}
    env.update({"HAIDANG_API_KEYS": "bench-key-not-secret",
                "HAIDANG_SECURITY__AUDIT_LOG": str(tmp / "audit.log")})
    cmd = [sys.executable, str(HERE / "serve.py"), "serving.cdss.app:app_from_env", str(port), "1",
           "auto"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - start < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        ready = time.monotonic() - start
        return {"readyz_s": round(ready, 2), "rss_mb": round(_tree_rss_kb(proc.pid) / 1024)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines()
                              if line.startswith("VmRSS:")))
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, StopIteration):
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-server", action="store_true", help="skip the /readyz start-up run")
    ap.add_argument("--out", type=Path, default=HERE / "knowledge.json")
    args = ap.parse_args(argv)
    kb = KnowledgeBase.load()
    engine = CheckEngine(kb, Icd10())
    data = json.loads(SAMPLES.read_text(encoding="utf-8"))["prescriptions"]
    rxs = [Prescription(lines=[DrugLine(text=t) for t in p["lines"]], diagnoses=p["diagnoses"],
                        sex=p["sex"], age_days=p["age_years"] * 365) for p in data]
    report = {
        "ingredients": len(kb.drugs),
        "interactions": len(kb.all_interactions),
        "qd5948": qd5948(kb, engine),
        "ansm": ansm(kb, engine),
        "samples": samples(engine),
        "false_alarms": false_alarms(kb, engine),
        "cost": cost(rxs),
    }
    if not args.no_server:
        report["server"] = server()
    shown_check = shown(engine.check(rxs[3]).alerts, "moderate")
    report["samples"]["knee_oa_native_alerts"] = [a.id for a in shown_check]
    args.out.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n",
                        encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k != "false_alarms"},
                     ensure_ascii=False, indent=1))
    fa = report["false_alarms"]
    print(f"false alarms: {fa['pairs_major_or_contraindicated']}/{fa['pairs']} pairs "
          f"({fa['rate']:.2%}), of which named by no reference (class rows only) "
          f"{fa['pairs_flagged_only_by_class_rows']} ({fa['rate_class_rows_only']:.2%}); "
          f"unrecognised {fa['unrecognised']}")
    for line in fa["flagged"]:
        print("  ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
