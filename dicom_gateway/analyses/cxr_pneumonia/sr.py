"""TID 1500 Measurement Report (Comprehensive 3D SR) for an AI chest X-ray finding.

Built with highdicom so the tree follows the template: a device observer naming the
algorithm and its version, one measurement group (TID 1501) with the pneumonia
present/absent evaluation and the probability, the source images as evidence,
VerificationFlag UNVERIFIED, and a comment saying, in Vietnamese and English, that this
is AI output.

Codes: SNOMED CT 233604007 Pneumonia; 52101004 Present / 272519000 Absent (DICOM CID 240);
363679005 Imaging procedure (procedure reported; CID 100 has no chest radiograph) with
399208008 Plain chest X-ray as the performed procedure; 39607008 Lung (finding site);
DCM 122157 Probability with UCUM "1" (no units), DCM 121106 Comment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from highdicom.sr import (
    AlgorithmIdentification,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_gateway.analyses.cxr_pneumonia import codes as finding_codes
from dicom_gateway.analyses.cxr_pneumonia.wording import (
    AI_DISCLAIMER_EN,
    AI_DISCLAIMER_VI,
    percent,
    series_description,
    verdict_en,
    verdict_vi,
)
from serving.imaging.predictor import Prediction

PNEUMONIA = Code(finding_codes.PNEUMONIA[0], finding_codes.SNOMED_CT, finding_codes.PNEUMONIA[1])
PRESENT = Code(finding_codes.PRESENT[0], finding_codes.SNOMED_CT, finding_codes.PRESENT[1])
ABSENT = Code(finding_codes.ABSENT[0], finding_codes.SNOMED_CT, finding_codes.ABSENT[1])
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")  # CID 100
PLAIN_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
LUNG = Code("39607008", "SCT", "Lung")
PROBABILITY = Code("122157", "DCM", "Probability")
NO_UNITS = Code("1", "UCUM", "no units")
COMMENT = Code("121106", "DCM", "Comment")
MANUFACTURER = finding_codes.MANUFACTURER


def algorithm_uid(prediction: Prediction) -> str:
    """A stable device UID per model file, so the same model is the same observer everywhere."""
    return generate_uid(entropy_srcs=[prediction.model, prediction.version, prediction.sha256])


def build_sr(source_images: Sequence[Dataset], prediction: Prediction, *,
             series_uid: str | None = None, series_number: int = 9001,
             instance_number: int = 1,
             previous_versions: Sequence[Dataset] = ()) -> Comprehensive3DSR:
    """The SR for ``prediction`` about ``source_images`` (one study), in a new series.

    ``previous_versions``: the SRs this one replaces (an earlier analysis of the same study,
    before a late image arrived); they are listed in Predecessor Documents Sequence, the
    DICOM way of saying a document is superseded."""
    if not source_images:
        raise ValueError("an SR needs at least one source image as evidence")
    algorithm = AlgorithmIdentification(
        name=prediction.model, version=prediction.version,
        parameters=[f"threshold={prediction.threshold:g}", f"sha256={prediction.sha256[:16]}"])
    device = DeviceObserverIdentifyingAttributes(
        uid=algorithm_uid(prediction), name=f"Hai Dang AI {prediction.model}"[:64],
        manufacturer_name=MANUFACTURER, model_name=f"{prediction.model} {prediction.version}"[:64],
        serial_number=prediction.sha256[:16])
    context = ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(),
                                               identifier="AI pneumonia triage"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        finding_sites=[FindingSite(LUNG)],
        measurements=[Measurement(name=PROBABILITY, value=round(prediction.probability, 6),
                                  unit=NO_UNITS, algorithm_id=algorithm)],
        qualitative_evaluations=[QualitativeEvaluation(
            name=PNEUMONIA, value=PRESENT if prediction.finding else ABSENT)],
        source_images=[SourceImageForMeasurementGroup.from_source_image(ds)
                       for ds in source_images],
    )
    report = MeasurementReport(observation_context=context, procedure_reported=IMAGING_PROCEDURE,
                               imaging_measurements=[group])
    statement = (f"{verdict_vi(prediction.finding)} ({percent(prediction.probability)}). "
                 f"{AI_DISCLAIMER_VI} / {verdict_en(prediction.finding)} "
                 f"({percent(prediction.probability)}). {AI_DISCLAIMER_EN} "
                 f"Model {prediction.model} {prediction.version}.")
    report[0].ContentSequence.append(
        TextContentItem(name=COMMENT, value=statement, relationship_type="CONTAINS"))
    now = dt.datetime.now()
    first = source_images[0]
    return Comprehensive3DSR(
        evidence=list(source_images), content=report,
        series_instance_uid=series_uid or generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, specific_character_set="ISO_IR 192",
        performed_procedure_codes=[PLAIN_CHEST_XRAY],
        is_complete=True, is_final=False, is_verified=False,
        series_description=series_description(prediction.finding, "SR"),
        manufacturer_model_name=prediction.model[:64], software_versions=prediction.version,
        device_serial_number=prediction.sha256[:16],
        institution_name=getattr(first, "InstitutionName", None) or None,
        content_date=now.date(), content_time=now.time(),
        series_date=now.date(), series_time=now.time(),
        previous_versions=list(previous_versions) or None,
    )


def read_finding(sr: Dataset) -> tuple[bool, float]:
    """(pneumonia present, probability) as stored in an SR built here: for tests and audits."""
    parsed = Comprehensive3DSR.from_dataset(sr, copy=True)
    group = parsed.content.get_image_measurement_groups()[0]
    evaluation = group.get_qualitative_evaluations(name=PNEUMONIA)[0]
    measurement = group.get_measurements(name=PROBABILITY)[0]
    present = evaluation.value == PRESENT
    return present, float(measurement.value)
