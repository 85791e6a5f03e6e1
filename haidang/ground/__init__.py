"""The ground every room stands on: settings, logs, processes, the audit trail, API keys and
callers, file helpers.

It imports no room (``dicom_gateway``, ``serving``, ``training``) and nothing of the product's
top (``haidang.cli``, ``haidang.up``, ``haidang.web``, the demo): the import-linter contract in
``pyproject.toml`` checks it. Anything two rooms both need and that knows nothing of DICOM,
models or prescriptions belongs here.
"""
