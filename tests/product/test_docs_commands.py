"""Every ``haidang …`` command the documents show parses with the real CLI, so a renamed
command or option cannot leave the guides behind."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from haidang.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8").replace("\\\n", " ")
        candidates = re.findall(r"`(haidang [^`]+)`", text)
        candidates += [ln.strip() for ln in text.splitlines()
                       if ln.strip().startswith("haidang ")]
        for cmd in candidates:
            cmd = cmd.split("#")[0].strip().rstrip(")")
            if cmd in ("haidang …",) or cmd.startswith("haidang …"):
                continue
            found.append((path.name, cmd))
    return sorted(set(found))


def test_documents_show_commands():
    assert len(documented_commands()) >= 20


@pytest.mark.parametrize("doc,command", documented_commands())
def test_documented_command_parses(doc, command):
    argv = shlex.split(command)[1:]
    argv = [{"ID": "1"}.get(a, a) for a in argv]  # placeholders a reader replaces
    if not any(a.startswith("-") for a in argv) and len(argv) <= 2:
        # a command named in running text (`haidang send`): it must exist
        with pytest.raises(SystemExit) as exc, contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args([*argv, "--help"])
        assert exc.value.code == 0, f"{doc}: `{command}` is not a command"
        return
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{doc}: `{command}` does not parse (exit {exc.code})")
    assert callable(args.handler)
