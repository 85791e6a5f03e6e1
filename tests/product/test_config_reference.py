"""docs/configuration.md is generated from the settings schema and cannot drift from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from haidang import config_cli
from haidang.ground.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z0-9_.]+)` \| ([^|]+(?:\\\|[^|]+)*) \| (.+?) \| "
                 r"`(HAIDANG_[A-Z0-9_]+)` \|")


def _leaves(model, prefix=""):
    for name, field in model.model_fields.items():
        sub, many = config_cli._model_of(field.annotation)
        if sub is not None and not many:
            yield from _leaves(sub, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_committed_reference_equals_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == config_cli.reference(), (
        "docs/configuration.md is out of date: haidang config reference --out "
        "docs/configuration.md")


def test_every_setting_has_a_row_with_default_and_variable():
    text = config_cli.reference()
    keys = {m.group(1) for m in map(ROW.match, text.splitlines()) if m}
    assert set(_leaves(Settings)) <= keys
    assert "| `gateway.port` | int | `11112` | `HAIDANG_GATEWAY__PORT` |" in text


def test_each_documented_variable_really_sets_its_setting():
    """Set every scalar setting through the variable the reference names, then read it back."""
    checked = 0
    for line in config_cli.reference().splitlines():
        m = ROW.match(line)
        if not m:
            continue
        key, kind, var = m.group(1), m.group(2), m.group(4)
        value = {"int": ("7", 7), "float": ("2.5", 2.5), "bool": ("true", True),
                 "str": ("X-1", "X-1")}.get(kind.split(" ")[0])
        if kind.startswith("Path"):
            value = ("/srv/x", "/srv/x")
        if value is None:
            continue
        settings = load_settings(environ={var: value[0]})
        node = settings
        for part in key.split("."):
            node = getattr(node, part)
        assert (str(node) if kind.startswith("Path") else node) == value[1], (key, var)
        checked += 1
    assert checked >= 30


def test_notes_and_other_variables_name_real_things():
    leaves = set(_leaves(Settings))
    assert set(config_cli.NOTES) <= leaves
    source = "\n".join(p.read_text(encoding="utf-8") for folder in ("haidang", "serving",
                       "dicom_gateway") for p in (ROOT / folder).rglob("*.py")
                       if p.name != "config_cli.py")
    for name in config_cli.OTHER_ENV:
        assert name in source, name


def test_cli_check_mode():
    run = subprocess.run([sys.executable, "-m", "haidang", "config", "reference", "--check",
                          str(DOC)], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "up to date" in run.stdout
