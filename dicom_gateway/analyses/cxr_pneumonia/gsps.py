"""Grayscale Softcopy Presentation State: the AI result drawn over the original radiograph.

Any PACS viewer that applies presentation states shows the radiologist's own image with
the finding as a text annotation and the regions the model relied on as outlines: no
burned-in copy of the image is needed. Built with highdicom.

The heat map covers the centre square the model saw (``center_square_np``); it is scaled
to that square in the source's pixel grid, cut at half its maximum, and each region
larger than 1% of the square is outlined by its convex hull (a closed POLYLINE in PIXEL
units). Evidence *for* the finding only (negative values are dropped, as in the picture).
The image's own window (VOI) is carried over by highdicom; MONOCHROME1 images get an
INVERSE presentation LUT so the radiograph looks as it does without the presentation state.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage
from scipy.spatial import ConvexHull

from dicom_gateway.analyses.cxr_pneumonia.codes import MANUFACTURER
from dicom_gateway.analyses.cxr_pneumonia.wording import (
    percent,
    series_description,
    verdict_en,
    verdict_vi,
)
from serving.imaging.explain import normalise, resize_map
from serving.imaging.predictor import Prediction
from serving.imaging.preprocess import inner_side

CUT = 0.5  # fraction of the map's maximum that bounds a region
MIN_AREA = 0.01  # regions smaller than this fraction of the square are noise


def heat_outlines(heat: np.ndarray, rows: int, columns: int,
                  inner_crop: float = 1.0) -> list[np.ndarray]:
    """Closed outlines (N x 2 arrays of column, row pixel coordinates) of the heat map's
    strong regions, in the pixel grid of a ``rows`` x ``columns`` image; the map covers the
    centre square the model saw (``inner_crop`` of the shorter side, as ``center_square_np``)."""
    side = inner_side(min(rows, columns), inner_crop)
    top, left = max(rows // 2 - side // 2, 0), max(columns // 2 - side // 2, 0)
    weight = resize_map(normalise(np.asarray(heat, np.float32)), (side, side))
    labels, count = ndimage.label(weight >= CUT * float(weight.max() or 1))
    outlines = []
    for region in range(1, count + 1):
        r, c = np.nonzero(labels == region)
        if r.size < MIN_AREA * side * side:
            continue
        points = np.column_stack([c + left + 0.5, r + top + 0.5]).astype(np.float64)
        hull = points[ConvexHull(points).vertices]
        outlines.append(np.vstack([hull, hull[:1]]))  # closed: last point = first
    return outlines


def build_gsps(source: Dataset, heat: np.ndarray | None, prediction: Prediction, *,
               inner_crop: float = 1.0, series_uid: str | None = None,
               series_number: int = 9003,
               instance_number: int = 1) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """A presentation state for ``source`` (one single-frame image) showing ``prediction``."""
    rows, columns = int(source.Rows), int(source.Columns)
    layer = hd.pr.GraphicLayer(layer_name="AI", order=1,
                               description="Hai Dang AI result (unverified)")
    text = (f"{verdict_vi(prediction.finding)} {percent(prediction.probability)} / "
            f"{verdict_en(prediction.finding)} - AI, chưa xác nhận / unverified")
    label = hd.pr.TextObject(
        text_value=text, units=hd.pr.AnnotationUnitsValues.PIXEL,
        bounding_box=(0.02 * columns, 0.02 * rows, 0.98 * columns, 0.08 * rows),
        text_justification=hd.pr.TextJustificationValues.LEFT)
    outlines = [] if heat is None or not prediction.finding else [
        hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=points,
                            units=hd.pr.AnnotationUnitsValues.PIXEL)
        for points in heat_outlines(heat, rows, columns, inner_crop)]
    annotation = hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=layer,
                                         graphic_objects=outlines or None,
                                         text_objects=[label])
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source],
        series_instance_uid=series_uid or generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, manufacturer_model_name=prediction.model[:64],
        software_versions=prediction.version, device_serial_number=prediction.sha256[:16],
        content_label="AI_RESULT", content_description=series_description(
            prediction.finding, "overlay")[:64],
        graphic_annotations=[annotation], graphic_layers=[layer],
        institution_name=source.get("InstitutionName") or None,
        # a MONOCHROME1 radiograph (white = low values) must stay as the modality shows it:
        # a presentation state replaces the image's own photometric meaning with its LUT
        presentation_lut_transformation=hd.PresentationLUTTransformation(
            presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE
            if source.get("PhotometricInterpretation") == "MONOCHROME1"
            else hd.PresentationLUTShapeValues.IDENTITY),
    )
    gsps.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the Vietnamese annotation needs it
    gsps.SeriesDescription = series_description(prediction.finding, "overlay")
    gsps.Laterality = source.get("Laterality", "")  # type 2C: the source's, or empty
    return gsps
