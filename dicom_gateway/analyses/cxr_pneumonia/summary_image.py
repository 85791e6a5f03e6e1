"""Visual summary: the region the model looked at, its heat map, and a bilingual verdict banner.

The picture shows what the model saw (the centre square of the radiograph) with the
occlusion map over it, so a radiologist can tell at a glance whether the evidence sits in
the lungs. It goes to PACS as a Secondary Capture in the same study when
``export.summary_image`` is on (the presentation state always goes), and as a PNG
thumbnail for the worklist.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_gateway.analyses.cxr_pneumonia.codes import MANUFACTURER
from dicom_gateway.analyses.cxr_pneumonia.wording import (
    percent,
    series_description,
    verdict_en,
    verdict_vi,
)
from serving.imaging.explain import normalise, resize_map
from serving.imaging.predictor import Prediction

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT = FONT_DIR / "DejaVuSans.ttf"
FONT_BOLD = FONT_DIR / "DejaVuSans-Bold.ttf"
SIDE = 640
BANNER = 124


@functools.lru_cache(maxsize=8)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; the banner needs a font with Vietnamese glyphs: "
            "apt-get install fonts-dejavu-core (scripts/setup.sh does)")
    return ImageFont.truetype(str(path), size)


def _colormap(x: np.ndarray) -> np.ndarray:
    """A 'jet'-like map [0,1] → RGB float, written out so no plotting library is needed."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def model_view(ds: Dataset) -> np.ndarray:
    """The displayed radiograph ([0,1], MONOCHROME2) cropped to the square the model sees."""
    from serving.imaging.preprocess import center_square_np, dicom_to_unit

    return center_square_np(dicom_to_unit(ds))


def render_summary(view: np.ndarray, heat: np.ndarray, prediction: Prediction) -> np.ndarray:
    """RGB uint8 [BANNER+SIDE, SIDE, 3]: banner (Vietnamese, then English) over image + heat map."""
    grey = resize_map(np.asarray(view, np.float32), (SIDE, SIDE))
    grey = np.clip(grey, 0, 1)[..., None].repeat(3, axis=-1)
    weight = resize_map(normalise(heat), (SIDE, SIDE))
    weight = np.clip(weight, 0, 1)
    alpha = (0.55 * weight)[..., None] * (weight[..., None] > 0.15)
    picture = (1 - alpha) * grey + alpha * _colormap(weight)
    canvas = Image.new("RGB", (SIDE, SIDE + BANNER), (150, 20, 20) if prediction.finding
                       else (25, 70, 45))
    canvas.paste(Image.fromarray((picture * 255).round().astype(np.uint8)), (0, BANNER))
    draw = ImageDraw.Draw(canvas)
    p = percent(prediction.probability)
    draw.text((16, 10), f"{verdict_vi(prediction.finding)} — {p}", font=_font(FONT_BOLD, 28),
              fill="white")
    draw.text((16, 48), f"{verdict_en(prediction.finding)} — {p}", font=_font(FONT, 22),
              fill=(235, 235, 235))
    draw.text((16, 84), f"AI {prediction.model} {prediction.version} · chưa được bác sĩ xác nhận"
              " / not verified by a physician", font=_font(FONT, 15), fill=(255, 230, 160))
    return np.asarray(canvas)


def build_sc(source: Dataset, rgb: np.ndarray, prediction: Prediction, *,
             series_uid: str | None = None, series_number: int = 9002,
             instance_number: int = 1) -> hd.sc.SCImage:
    """Secondary Capture in the study of ``source``, in a new series that says AI + verdict."""
    orientation = tuple(str(x) for x in (source.get("PatientOrientation", []) or []))
    known = len(orientation) == 2 and all(orientation)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(rgb, np.uint8),
        photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        # highdicom wants an orientation; when the source has none we blank it afterwards
        patient_orientation=orientation if known else ("L", "F"),
        series_instance_uid=series_uid or generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description=series_description(prediction.finding, "summary"),
        specific_character_set="ISO_IR 192",
    )
    sc.ImageComments = (f"{verdict_vi(prediction.finding)} ({percent(prediction.probability)}) "
                        f"/ {verdict_en(prediction.finding)} - AI, chua xac nhan / unverified")
    if not known:
        sc.PatientOrientation = ""  # type 2: unknown rather than invented
    sc.BurnedInAnnotation = "YES"
    sc.Laterality = source.get("Laterality", "")  # type 2C: the source's, or empty
    return sc


def thumbnail_png(rgb: np.ndarray, width: int = 160) -> bytes:
    """A small PNG of the summary for the worklist page (the worker stores it)."""
    im = Image.fromarray(np.asarray(rgb, np.uint8))
    im.thumbnail((width, width * 2))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()
