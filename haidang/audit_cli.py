"""``haidang audit verify [FILE]``: check the audit trail's hash chains."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("audit", help="the audit trail: verify its hash chains")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    q = asub.add_parser("verify", help="re-hash every record; exit 1 and name the line if "
                                       "anything was changed or removed")
    q.add_argument("file", nargs="?", help="audit log (default: security.audit_log)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_verify)


def cmd_verify(args) -> int:
    from haidang.ground.audit import verify_chain

    if args.file:
        path = Path(args.file)
    else:
        from haidang.ground.settings import load_settings

        path = Path(load_settings(args.config).security.audit_log)
    if not path.is_file():
        print(f"haidang audit: {path} does not exist; give the audit log's path "
              "(security.audit_log)", file=sys.stderr)
        return 2
    count, problems = verify_chain(path)
    events: Counter = Counter()
    writers = set()
    with open(path, "rb") as handle:
        for raw in handle:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict):
                events[str(rec.get("event"))] += 1
                writers.add(rec.get("writer"))
    if args.json:
        print(json.dumps({"file": str(path), "records": count, "writers": len(writers),
                          "events": dict(events), "intact": not problems,
                          "problems": problems}, indent=2))
    else:
        print(f"{path}: {count} records from {len(writers)} writers "
              f"({', '.join(f'{k} {v}' for k, v in sorted(events.items())) or 'none'})")
        for problem in problems:
            print(f"TAMPERED {problem}")
        print("intact: every chain verifies" if not problems
              else f"NOT intact: {len(problems)} problem(s)")
    return 0 if not problems else 1
