"""The HIS integration guide's examples, executed against the real CDSS app.

``docs/examples/his/examples.json`` lists each example (method, path, headers, request
file, expected status, response file). ``docs/his-integration.md`` shows every request and
response between ``<!-- example:NAME -->`` markers, verbatim from those files.

    python -m tests.support.his_examples --write   # re-run every request, rewrite responses + guide

``tests/product/test_docs_examples.py`` runs the same requests and fails when the app's answers no
longer match the documented ones or the guide no longer shows the files: the examples
cannot rot.
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "his"
GUIDE = ROOT / "docs" / "his-integration.md"
CATALOGUE = EXAMPLES / "danh-muc-thuoc.csv"  # the guide's hospital drug catalogue
API_KEY = "khoa-HIS-vi-du-2026"  # the key the examples send; configured by the test app
JWT_PLACEHOLDER = "Bearer <JWT ký bằng khoá riêng của HIS / signed with the HIS private key>"
VOLATILE = {"uuid"}  # differs on every call: documented as "…"


def examples() -> list[dict]:
    return json.loads((EXAMPLES / "examples.json").read_text(encoding="utf-8"))


@contextmanager
def app_client(tmp: Path):
    """The real app and knowledge base, with the API key, a HIS signing key and the guide's
    drug catalogue (`haidang cdss import-catalog docs/examples/his/danh-muc-thuoc.csv`)."""
    from fastapi.testclient import TestClient

    from serving.cdss.app import create_app
    from serving.cdss.catalog import catalog_path, import_catalog
    from serving.cdss.knowledge import KnowledgeBase
    from tests.support.cdss_support import ISSUER, Signer, settings_for

    signer = Signer("his-2026", "ES384")
    jwks = signer.write_jwks(tmp / "jwks.json")
    old = os.environ.get("HAIDANG_API_KEYS")
    os.environ["HAIDANG_API_KEYS"] = API_KEY
    try:
        settings = settings_for(tmp, jwks_file=str(jwks), allowed_issuers=[ISSUER])
        import_catalog(CATALOGUE, KnowledgeBase.load()).catalog.save(catalog_path(settings))
        with TestClient(create_app(settings)) as client:
            yield client, signer
    finally:
        if old is None:
            os.environ.pop("HAIDANG_API_KEYS", None)
        else:
            os.environ["HAIDANG_API_KEYS"] = old


def send(client, signer, example: dict):
    headers = dict(example.get("headers") or {})
    if headers.get("Authorization") == JWT_PLACEHOLDER:  # a fresh token, as the HIS signs one
        headers["Authorization"] = "Bearer " + signer.token("http://testserver" + example["path"])
    body = (EXAMPLES / example["request"]).read_bytes() if example.get("request") else None
    return client.request(example["method"], example["path"], content=body, headers=headers)


def normalise(value):
    if isinstance(value, dict):
        return {k: ("…" if k in VOLATILE else normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def dump(value) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2) + "\n"


def shape(value):
    """The structure of a JSON value: dict keys, list item shapes, scalar kinds."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return sorted({json.dumps(shape(v), sort_keys=True) for v in value})
    if value is None:
        return "null"
    return type(value).__name__


def _fence(name: str) -> str:
    return "xml" if name.endswith(".xml") else "json"


def guide_block(example: dict) -> str:
    """What the guide shows for one example (request line, headers, body, answer)."""
    lines = ["```http", f"{example['method']} {example['path']} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in (example.get("headers") or {}).items()]
    lines.append("```")
    if example.get("request"):
        body = (EXAMPLES / example["request"]).read_text(encoding="utf-8").rstrip("\n")
        lines += [f"Request body (`docs/examples/his/{example['request']}`):", "",
                  f"```{_fence(example['request'])}", body, "```"]
    response = (EXAMPLES / example["response"]).read_text(encoding="utf-8").rstrip("\n")
    lines += ["", f"Response `{example['status']}` (`docs/examples/his/{example['response']}`):",
              "", "```json", response, "```"]
    return "\n".join(lines)


MARK = re.compile(r"(<!-- example:(?P<name>[a-z0-9-]+) -->\n)(.*?)(<!-- /example -->)", re.S)


def render_guide(text: str) -> str:
    by_name = {e["name"]: e for e in examples()}
    return MARK.sub(
        lambda m: m.group(1) + guide_block(by_name[m.group("name")]) + "\n" + m.group(4), text)


def write() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, app_client(Path(tmp)) as (client, signer):
        for example in examples():
            response = send(client, signer, example)
            if response.status_code != example["status"]:
                raise SystemExit(f"{example['name']}: status {response.status_code}, "
                                 f"documented {example['status']}: {response.text[:500]}")
            (EXAMPLES / example["response"]).write_text(dump(normalise(response.json())),
                                                        encoding="utf-8")
    GUIDE.write_text(render_guide(GUIDE.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {len(examples())} responses and {GUIDE.relative_to(ROOT)}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit(__doc__)
    write()
