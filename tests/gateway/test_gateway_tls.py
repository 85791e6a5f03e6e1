"""DICOM TLS on the gateway's listener, with dcmtk storescu as the TLS client."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from dicom_gateway.runtime import Gateway
from haidang.ground.settings import TLSSettings
from haidang.testbed.studies import fresh_copy
from tests.support.gateway_helpers import gateway_settings
from tests.support.pacs import storescu

pytestmark = pytest.mark.orthanc


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A throw-away CA with a server and a client certificate."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-days", "2", "-subj", "/CN=Haidang test CA", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", cwd=d)


def test_tls_listener_requires_a_trusted_client(tmp_path):
    pki = tmp_path / "pki"
    make_pki(pki)
    settings = gateway_settings(tmp_path, quiet=30)
    settings.gateway.tls = TLSSettings(cert_file=pki / "server.crt", key_file=pki / "server.key",
                                       ca_file=pki / "ca.crt", require_client_cert=True)
    f = fresh_copy("ct", tmp_path / "send")
    with Gateway(settings) as gw:
        tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf",
               str(pki / "ca.crt")]
        res = storescu([f], gw.port, "HAIDANG", extra=tls)
        assert res.returncode == 0, res.stderr
        assert gw.index.counts()["instances"] == 1
        # plain TCP is refused, and so is TLS without a client certificate
        assert storescu([fresh_copy("ct", tmp_path / "send")], gw.port, "HAIDANG",
                        timeout=60).returncode != 0
        anon = ["+tla", "+cf", str(pki / "ca.crt")]
        assert storescu([fresh_copy("ct", tmp_path / "send")], gw.port, "HAIDANG",
                        extra=anon, timeout=60).returncode != 0
        assert gw.index.counts()["instances"] == 1
