"""Real peers on loopback and real sample studies, for the demo, the tests and the benchmarks.

An Orthanc PACS with its own storage (``orthanc``), the dcmtk command-line tools
(``dcmtk``), a throw-away PostgreSQL server (``postgres``) and real DICOM files copied with
fresh UIDs (``studies``). One copy of each, so the demo, the test suite and ``bench/`` start
their peers the same way, and benchmarks never import the tests.
"""
