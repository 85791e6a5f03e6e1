"""schemathesis against the CDSS's own OpenAPI (native QĐ 130 API and CDS Hooks): generated
valid (positive) and invalid (negative) requests for every operation, bounded; no answer may
be a server error (5xx)."""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from serving.cdss import cdshooks
from serving.cdss.app import create_app
from tests.support.cdss_support import real_kb, settings_for

EXAMPLES = 40  # per operation and mode


def test_cdss_openapi_has_no_server_errors(tmp_path):
    app = create_app(settings_for(tmp_path, development=True, max_body_bytes=65536),
                     kb=real_kb())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: Counter = Counter()
    errors: list = []
    operations = [r.ok() for r in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /api/v1/prescriptions/check", "GET /cds-services",
            "POST /cds-services/{service_id}",
            "POST /cds-services/{service_id}/feedback"} <= labels, labels
    for op in operations:
        for mode in GenerationMode:
            try:
                strategy = op.as_strategy(generation_mode=mode)
            except Exception:  # noqa: BLE001 - nothing invalid to generate for e.g. a bare GET
                continue
            _fuzz(op.label, mode.value, strategy, counts, errors)
        if "{service_id}" in op.path:  # and with the real service ids, to reach the parsers
            for sid in cdshooks.SERVICES:
                strategy = op.as_strategy(path_parameters={"service_id": sid})
                _fuzz(f"{op.label} [{sid}]", "positive", strategy, counts, errors)
    print("schemathesis requests:", dict(counts))
    assert sum(counts[k] for k in ("2xx", "4xx", "5xx")) >= 4 * EXAMPLES
    assert counts["5xx"] == 0 and not errors, errors[:5]


def _fuzz(label: str, mode: str, strategy, counts: Counter, errors: list) -> None:
    @given(case=strategy)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        response = case.call()
        counts[f"{response.status_code // 100}xx"] += 1
        counts[f"{label} {mode}"] += 1
        if response.status_code >= 500:
            errors.append((label, response.status_code, response.text[:300]))

    try:
        run()
    except Unsatisfiable:  # negative mode on an operation without inputs: nothing to break
        counts[f"{label} {mode} (no inputs)"] += 1
