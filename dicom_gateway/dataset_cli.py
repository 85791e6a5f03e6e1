"""``haidang dataset export``: a de-identified training set from the studies in the spool."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("dataset", help="de-identified training sets for data scientists")
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    q = dsub.add_parser("export", help="copy spool images through the PS3.15 Basic profile, "
                                       "with labels.csv for 'haidang train'")
    q.add_argument("--out", required=True, type=Path, help="new folder for images + labels.csv")
    q.add_argument("--since", help="only instances received on/after this date (YYYY-MM-DD)")
    q.add_argument("--modality", help="only this modality, e.g. CR")
    q.add_argument("--verdict", help="only studies whose current AI verdict is this, "
                                     "e.g. pneumonia")
    q.add_argument("--key", type=Path, help="re-identification key file, kept apart "
                                            "(default: OUT-reid-key.csv beside OUT)")
    q.add_argument("--secret", type=Path, default=Path("var/deid-secret.key"),
                   help="HMAC secret for pseudonyms; created on first use (default %(default)s)")
    q.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from tqdm import tqdm

    from dicom_gateway.deid import export_dataset, load_secret
    from dicom_gateway.index import Index
    from haidang.ground import audit
    from haidang.ground.settings import load_settings

    settings = load_settings(args.config)
    since = None
    if args.since:
        try:
            since = datetime.strptime(args.since, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
        except ValueError:
            print(f"haidang dataset export: --since {args.since!r} is not YYYY-MM-DD",
                  file=sys.stderr)
            return 2
    out = args.out
    if out.exists() and any(out.iterdir()):
        print(f"haidang dataset export: {out} exists and is not empty; choose a new folder",
              file=sys.stderr)
        return 2
    key = args.key or out.with_name(out.name + "-reid-key.csv")
    if key.resolve().is_relative_to(out.resolve()):
        print("haidang dataset export: --key must lie outside --out (the key re-identifies)",
              file=sys.stderr)
        return 2
    index = Index(settings.gateway.database_url)
    try:
        res = export_dataset(index, Path(settings.gateway.spool_dir), out, key,
                             load_secret(args.secret), since, args.modality, args.verdict,
                             progress=lambda rows: tqdm(rows, desc="de-identify", unit="img"))
    finally:
        index.close()
    audit.record(settings, "dataset-export", exported=res.exported, labelled=res.labelled,
                 labelled_by_radiologists=res.labelled_by_radiologists,
                 studies=len(res.studies), filters={"since": args.since,
                                                    "modality": args.modality,
                                                    "verdict": args.verdict})
    print(f"exported {res.exported} images of {len(res.studies)} studies "
          f"({len(res.patients)} pseudonymous patients) to {out}; {res.labelled} labelled in "
          f"{out / 'labels.csv'} ({res.labelled_by_radiologists} by radiologists' reviews, "
          f"the rest by the AI's verdict); left out {res.skipped_burned_in} with burned-in "
          f"annotation, {res.unreadable} unreadable")
    print(f"re-identification key: {key} (keep it apart from the data set)")
    if res.labelled:
        print(f"train: haidang train cxr-pneumonia --data {out} --labels {out / 'labels.csv'} "
              "--out models/cxr-pneumonia/NEW_VERSION")
    return 0
