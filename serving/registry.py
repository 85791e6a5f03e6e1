"""The model registry reader: which ONNX model serving runs, and what its card says.

Layout (plain files, portable, reviewable in git)::

    models/<name>/current            one line: the version serving uses (not a symlink)
    models/<name>/<version>/model.onnx
    models/<name>/<version>/card.yaml    name, version, task, labels, input, output,
                                         threshold, metrics, provenance, sha256, ...
    models/<name>/<version>/*.png        evaluation plots

Interface used by serving and the CLI:

* ``ModelRegistry(root=Path("models"))`` with ``.names()``, ``.versions(name)``,
  ``.current(name) -> ModelVersion``, ``.promote(name, version)``.
* ``ModelVersion`` (``name, version, path, onnx_path, card, sha256``);
  ``ModelVersion.load(path)`` reads a version folder and verifies the sha256 of
  ``model.onnx`` against the card (``ModelIntegrityError`` on mismatch).

No torch, no onnxruntime here: reading the registry is cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from haidang.ground.files import atomic_write_text, sha256_of

CARD_FILE = "card.yaml"
ONNX_FILE = "model.onnx"
CURRENT_FILE = "current"


class RegistryError(LookupError):
    """A model or version is missing or malformed; the message says which and what to do."""


class ModelIntegrityError(RegistryError):
    """``model.onnx`` does not match the sha256 in its card: it changed after registration."""


def _version_key(version: str) -> list[Any]:
    """Natural order: 1.10.0 after 1.9.0; numbers before words at each position."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-_+]", version)]


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    path: Path
    onnx_path: Path
    card: dict[str, Any] = field(repr=False)
    sha256: str

    @classmethod
    def load(cls, path: Path | str, verify: bool = True) -> ModelVersion:
        """Read ``path`` (a version folder); with ``verify``, check model.onnx's sha256."""
        path = Path(path)
        card_path, onnx_path = path / CARD_FILE, path / ONNX_FILE
        if not card_path.is_file():
            raise RegistryError(f"{card_path} is missing: is {path} a model version folder?")
        if not onnx_path.is_file():
            raise RegistryError(f"{onnx_path} is missing: re-export the model (haidang train)")
        with open(card_path, encoding="utf-8") as fh:
            card = yaml.safe_load(fh) or {}
        expected = str(card.get("sha256", "")).lower()
        if not expected:
            raise ModelIntegrityError(f"{card_path} has no sha256 of {ONNX_FILE}")
        if verify:
            actual = sha256_of(onnx_path)
            if actual != expected:
                raise ModelIntegrityError(
                    f"{onnx_path} has sha256 {actual[:12]}…, its card says {expected[:12]}…: "
                    "the file changed after registration. Restore it from git, or re-train and "
                    "re-register."
                )
        return cls(
            name=str(card.get("name", path.parent.name)),
            version=str(card.get("version", path.name)),
            path=path,
            onnx_path=onnx_path,
            card=card,
            sha256=expected,
        )

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self.card.get("input", {}))

    @property
    def labels(self) -> list[str]:
        return list(self.card.get("labels", []))


class ModelRegistry:
    """Reads ``models/``; ``promote`` is the only write (an atomic replace of ``current``)."""

    def __init__(self, root: Path | str = Path("models")):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[str]:
        base = self.root / name
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if p.is_dir() and (p / CARD_FILE).is_file()]
        return sorted(found, key=_version_key)

    def version(self, name: str, version: str, verify: bool = True) -> ModelVersion:
        if version not in self.versions(name):
            known = ", ".join(self.versions(name)) or "none"
            raise RegistryError(f"model {name} has no version {version} (known: {known})")
        return ModelVersion.load(self.root / name / version, verify=verify)

    def current_version(self, name: str) -> str:
        pointer = self.root / name / CURRENT_FILE
        if not pointer.is_file():
            raise RegistryError(
                f"{pointer} is missing: choose a version with "
                f"`haidang models promote {name} VERSION`"
            )
        return pointer.read_text(encoding="utf-8").strip()

    def current(self, name: str, verify: bool = True) -> ModelVersion:
        if not (self.root / name).is_dir():
            known = ", ".join(self.names()) or "none"
            raise RegistryError(f"no model named {name} under {self.root} (known: {known})")
        return self.version(name, self.current_version(name), verify=verify)

    def promote(self, name: str, version: str) -> ModelVersion:
        """Point ``current`` at ``version`` after verifying it; atomic on POSIX and Windows."""
        mv = self.version(name, version, verify=True)
        atomic_write_text(self.root / name / CURRENT_FILE, version + "\n")
        return mv
