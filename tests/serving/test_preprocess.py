"""Preprocessing shared by training and serving: DICOM pixel maths and numpy == MONAI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from serving.imaging.preprocess import (
    DEFAULT_SPEC,
    PreprocessError,
    array_to_model_input,
    dicom_to_model_input,
    dicom_to_unit,
    unit_to_model_input,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "datasets" / "samples"
NPZ = ROOT / "datasets" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


def make_ds(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
            **attrs) -> Dataset:
    """A minimal CR dataset around ``pixels`` (uint16 or int16)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def ramp(h: int = 40, w: int = 30, top: int = 4095) -> np.ndarray:
    return np.linspace(0, top, h * w).reshape(h, w).astype(np.uint16)


def test_numpy_chain_equals_monai_chain():
    torch = pytest.importorskip("torch")
    from serving.imaging.preprocess import eval_transforms

    rng = np.random.default_rng(0)
    chain = eval_transforms(DEFAULT_SPEC)
    for shape in [(28, 28), (100, 73), (73, 100), (20, 20), (224, 224), (57, 300)]:
        unit = rng.random(shape).astype(np.float32)
        ours = unit_to_model_input(unit, DEFAULT_SPEC)
        monai = np.asarray(chain(torch.from_numpy(unit)[None]))
        assert ours.shape == monai.shape == (1, 28, 28)
        assert ours.dtype == np.float32
        assert np.max(np.abs(ours - monai)) <= 1e-6, shape
    # A full-size radiograph: float32 sums over ~4600 pixels per output differ a little more.
    big = rng.random((1955, 1841)).astype(np.float32)
    diff = np.abs(unit_to_model_input(big) - np.asarray(chain(torch.from_numpy(big)[None])))
    assert diff.max() <= 2e-5


def test_area_resize_equals_torch_area_interpolation():
    """The running-sum resize (bins that overlap by one pixel, shrinking one axis while
    growing the other) gives torch's adaptive average pooling."""
    torch = pytest.importorskip("torch")
    from serving.imaging.preprocess import area_resize_np

    rng = np.random.default_rng(1)
    for shape, size in [((1024, 1024), (224, 224)), ((1000, 777), (224, 224)),
                        ((300, 200), (128, 400)), ((7, 5), (3, 2)), ((64, 64), (64, 32))]:
        img = rng.random(shape).astype(np.float32)
        ours = area_resize_np(img, size)
        ref = torch.nn.functional.interpolate(torch.from_numpy(img)[None, None], size=size,
                                              mode="area")[0, 0].numpy()
        assert ours.shape == tuple(size) and ours.dtype == np.float32
        assert np.max(np.abs(ours - ref)) <= 1e-6, (shape, size)


def test_inner_crop_numpy_chain_equals_monai_chain():
    """cxr-triage's spec: 224 px from the central 80% of the square (view markers cut off)."""
    torch = pytest.importorskip("torch")
    from serving.imaging.preprocess import center_square_np, eval_transforms

    spec = {**DEFAULT_SPEC, "size": [224, 224], "inner_crop": 0.8}
    chain = eval_transforms(spec)
    rng = np.random.default_rng(1)
    for shape in [(256, 256), (300, 260), (1024, 1024)]:
        unit = rng.random(shape).astype(np.float32)
        ours = unit_to_model_input(unit, spec)
        monai = np.asarray(chain(torch.from_numpy(unit)[None]))
        assert ours.shape == monai.shape == (1, 224, 224)
        assert np.max(np.abs(ours - monai)) <= 2e-6, shape
    marked = np.zeros((250, 250), np.float32)
    marked[:, 240:] = 1.0  # a marker in the outer margin never reaches the model
    assert center_square_np(marked, 0.8).shape == (200, 200)
    assert unit_to_model_input(marked, spec).max() == pytest.approx(-2.0)


def test_other_input_size_from_spec():
    spec = {**DEFAULT_SPEC, "size": [64, 64]}
    out = array_to_model_input(np.full((28, 28), 255, np.uint8), spec)
    assert out.shape == (1, 64, 64)
    assert np.allclose(out, (1.0 - 0.5) / 0.25)


def test_monochrome1_is_inverted():
    px = ramp()
    m2 = dicom_to_unit(make_ds(px, "MONOCHROME2"))
    m1 = dicom_to_unit(make_ds(px, "MONOCHROME1"))
    assert m2[0, 0] == 0.0 and m2[-1, -1] == 1.0  # no window: min..max
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-7)


def test_rescale_slope_intercept_before_window():
    px = np.array([[0, 100], [200, 300]], np.uint16)
    # Modality values: 2 * px - 100 -> [-100, 100, 300, 500]; window 200 +- 200 (linear exact).
    ds = make_ds(px, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=200, WindowWidth=400,
                 VOILUTFunction="LINEAR_EXACT")
    np.testing.assert_allclose(dicom_to_unit(ds), [[0.0, 0.25], [0.75, 1.0]], atol=1e-6)


def test_window_linear_per_standard():
    px = np.array([[0, 1000, 1999], [2000, 2500, 4095]], np.uint16)
    ds = make_ds(px, WindowCenter=2000, WindowWidth=1000)
    unit = dicom_to_unit(ds)
    # PS3.3 C.11.2.1.2.1: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1].
    expected = np.clip((px - 1999.5) / 999 + 0.5, 0, 1)
    np.testing.assert_allclose(unit, expected, atol=1e-6)
    assert unit[0, 0] == 0.0 and unit[1, 2] == 1.0


def test_multi_valued_window_uses_first():
    px = ramp(top=1000)
    ds = make_ds(px, WindowCenter=[500, 100], WindowWidth=[1000, 10])
    assert 0.45 < dicom_to_unit(ds)[20, 15] < 0.55


def test_voi_lut_sequence_is_applied():
    px = np.array([[0, 1], [2, 3]], np.uint16)
    ds = make_ds(px, bits=12)
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.LUTData = [255, 170, 85, 0]  # an inverting LUT, 8-bit output
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 1, 2  # the LUT wins over the window
    np.testing.assert_allclose(dicom_to_unit(ds), [[1.0, 2 / 3], [1 / 3, 0.0]], atol=1e-6)


def test_colour_is_refused_with_a_reason():
    ds = make_ds(ramp(), "MONOCHROME2")
    ds.PhotometricInterpretation = "RGB"
    with pytest.raises(PreprocessError, match="not greyscale"):
        dicom_to_unit(ds)


def test_wrapped_sample_gives_exactly_the_validation_pixels():
    import csv

    with np.load(NPZ) as npz:
        val = npz["val_images"]
    with open(SAMPLES / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert rows
    for row in rows:
        idx = int(row["source"].split("[")[1].rstrip("]"))
        ds = pydicom.dcmread(SAMPLES / row["path"])
        np.testing.assert_allclose(dicom_to_model_input(ds, DEFAULT_SPEC),
                                   array_to_model_input(val[idx], DEFAULT_SPEC), atol=1e-6)


def test_real_monochrome1_cr_chest():
    ds = pydicom.dcmread(SAMPLES / "real-cr-chest-rg1.dcm")  # JPEG-LS lossless, 15-bit
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    unit = dicom_to_unit(ds)
    assert unit.shape == (ds.Rows, ds.Columns) and 0.0 <= unit.min() < unit.max() <= 1.0
    x = dicom_to_model_input(ds, DEFAULT_SPEC)
    assert x.shape == (1, 28, 28) and x.dtype == np.float32 and np.isfinite(x).all()
    # MONOCHROME1 inverted: the mediastinum/spine (centre columns) is brighter than the lungs.
    img = x[0]
    assert img[8:22, 12:16].mean() > img[8:22, 4:8].mean()


def test_serving_path_does_not_import_torch():
    code = (
        "import sys, pydicom\n"
        "from serving.imaging.preprocess import dicom_to_model_input\n"
        "from serving.registry import ModelRegistry\n"
        f"x = dicom_to_model_input(pydicom.dcmread(r'{SAMPLES / 'cxr-01-pneumonia.dcm'}'), None)\n"
        "assert x.shape == (1, 28, 28)\n"
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
