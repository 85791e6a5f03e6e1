"""Helpers shared by the CDSS tests: the fixture knowledge base, keys, signed JWTs."""

from __future__ import annotations

import json
import time
import uuid
from functools import lru_cache
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from haidang.ground.settings import load_settings

FIXTURES = Path(__file__).resolve().parents[1] / "support" / "fixtures" / "cdss"
FIXTURE_KB = FIXTURES / "kb"
ISSUER = "https://his.benhvien.example"


@lru_cache(maxsize=1)
def fixture_kb():
    """A tiny knowledge base in the real data-file format, with known rows for unit tests."""
    from serving.cdss.knowledge import KnowledgeBase

    return KnowledgeBase.load(FIXTURE_KB)


@lru_cache(maxsize=1)
def real_kb():
    """The knowledge base the product ships (datasets/knowledge + the QĐ 5948 list)."""
    from serving.cdss.knowledge import KnowledgeBase

    return KnowledgeBase.load()


def fixture_engine():
    from serving.cdss.checks import CheckEngine
    from serving.cdss.icd import Icd10

    return CheckEngine(fixture_kb(), Icd10(edits=FIXTURE_KB / "icd-edits.csv"))


def settings_for(tmp_path: Path, **security) -> object:
    env = {"HAIDANG_SECURITY__AUDIT_LOG": str(tmp_path / "audit.log"),
           "HAIDANG_SERVING__DRUG_CATALOG": str(tmp_path / "drug-catalog.json")}
    for key, value in security.items():
        env[f"HAIDANG_SECURITY__{key.upper()}"] = (
            value if isinstance(value, str) else json.dumps(value)
        )
    return load_settings(environ=env)


class Signer:
    """An EHR's signing key pair and its JWKS, as a CDS client would publish it."""

    def __init__(self, kid: str = "his-key-1", algorithm: str = "ES384"):
        self.kid = kid
        self.algorithm = algorithm
        if algorithm.startswith("ES"):
            self.private = ec.generate_private_key(ec.SECP384R1())
            public_jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(),
                                                            as_dict=True)
        public_jwk.update({"kid": kid, "use": "sig", "alg": algorithm})
        self.jwks = {"keys": [public_jwk]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks), encoding="utf-8")
        return path

    def token(self, aud: str, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "his-client", "aud": aud, "iat": now,
                  "exp": now + 120, "jti": str(uuid.uuid4())}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.algorithm,
                          headers={"kid": self.kid, "typ": "JWT"})
