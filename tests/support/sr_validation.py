"""The two independent DICOM validators every SR must pass: dciodvfy and PixelMed."""

from __future__ import annotations

import subprocess
from pathlib import Path

PIXELMED = "/usr/share/java/pixelmed.jar"
JAVA_LIMITS = ["-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0",
               "-Djdk.xml.xpathTotalOpLimit=0"]


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, timeout=120)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    return [line for line in text.splitlines() if line.startswith("Error")]


def pixelmed_sr_report(path: Path) -> str:
    out = subprocess.run(
        ["java", *JAVA_LIMITS, "-cp", PIXELMED, "com.pixelmed.validate.DicomSRValidator",
         str(path)], capture_output=True, timeout=180)
    return (out.stdout + out.stderr).decode("utf-8", "replace")


def pixelmed_dump(path: Path) -> str:
    """PixelMed's own reading of any object (its IOD validator knows no GSPS or SC)."""
    out = subprocess.run(["java", "-cp", PIXELMED, "com.pixelmed.dicom.AttributeList", str(path)],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode("utf-8", "replace")
    return (out.stdout + out.stderr).decode("utf-8", "replace")


def assert_valid_sr(path: Path) -> None:
    errors = dciodvfy_errors(path)
    assert not errors, f"dciodvfy errors in {path}: {errors}"
    report = pixelmed_sr_report(path)
    assert "Found Root Template TID_1500 (MeasurementReport)" in report, report
    bad = [line for line in report.splitlines() if line.startswith("Error")]
    assert not bad, f"PixelMed errors in {path}: {bad}"
