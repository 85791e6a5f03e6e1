#!/usr/bin/env bash
# Install everything Haidang and its tests need on a fresh Debian machine (idempotent).
#   system: Orthanc (test PACS), dcmtk (independent DICOM clients), dicom3tools and
#           PixelMed (SR validators), Chromium (worklist page tests), wrk (benchmarks)
#   python: .venv with the package, its train extra (CPU torch from disk) and dev tools
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || need+=(orthanc orthanc-dicomweb)
[ -f /usr/share/orthanc/plugins/libOrthancWebViewer.so ] || need+=(orthanc-webviewer)  # worklist "open images"
[ -x /usr/bin/storescu ] || need+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
[ -f /usr/share/java/pixelmed.jar ] || need+=(pixelmed-apps)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)  # Vietnamese glyphs
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v make >/dev/null 2>&1 || need+=(make)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)  # multi-worker tests
if [ ${#need[@]} -gt 0 ]; then
  echo "== apt-get install ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU build of torch lies on disk; installing it first keeps MONAI from pulling a CUDA build.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[train,dev]'
echo "== environment ready: $(python --version), $(python -c 'import torch;print("torch", torch.__version__)')"
