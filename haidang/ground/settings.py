"""One settings file (TOML) with environment-variable overrides.

Precedence, lowest to highest: defaults in this schema, the TOML file, then
environment variables named ``HAIDANG_<SECTION>__<FIELD>`` (for example
``HAIDANG_GATEWAY__PORT=11112``). List-valued settings (allowed sources,
destinations, routes) are set in the TOML file, or as JSON in the variable.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ENV_PREFIX = "HAIDANG_"
DEFAULT_CONFIG_ENV = "HAIDANG_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowedSource(_Section):
    """A calling AE allowed to push studies, and how long its studies stay quiet."""

    ae_title: str
    host: str | None = Field(
        None, description="IP address the association must come from; any if empty"
    )
    quiet_period_s: float | None = Field(None, description="overrides gateway.quiet_period_s")


class TLSSettings(_Section):
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = Field(None, description="CA bundle used to verify peer certificates")
    require_client_cert: bool = True


class GatewaySettings(_Section):
    ae_title: str = "HAIDANG"
    host: str = "0.0.0.0"
    port: int = 11112
    allowed_sources: list[AllowedSource] = Field(
        default_factory=list,
        description="calling AEs that may associate; empty list = accept any (development only)",
    )
    quiet_period_s: float = Field(
        3.0, description="a study is complete after this long with no new instance"
    )
    spool_dir: Path = Path("var/spool")
    database_url: str = "sqlite:///var/haidang.db"
    min_free_bytes: int = Field(
        512 * 1024 * 1024, description="below this free disk space C-STORE answers 0xA700"
    )
    fsync: bool = True
    tls: TLSSettings | None = None
    max_pdu: int = 0
    listener_processes: int = Field(
        1, ge=1, description="DICOM listener processes sharing the port (SO_REUSEPORT)"
    )
    job_workers: int = Field(
        1, ge=1, description="studies analysed at once. 1: a thread of the gateway process; "
        "more: that many worker processes (each with its own model session), so analyses use "
        "more cores than the one the listener and write-back share"
    )
    max_associations: int = Field(
        64, ge=1, description="associations open at once per listener process; more are "
        "rejected as transient (the sender retries)"
    )
    stop_grace_s: float = Field(
        20.0, ge=0, description="on stop: time for instances being received and running "
        "analyses to finish; what is left is taken back at the next start"
    )

    def quiet_period(self, ae_title: str) -> float:
        """How long a study from this source must be quiet to be complete: the source's own
        ``quiet_period_s`` (modalities that pause between series), else the default."""
        ae_title = ae_title.strip()
        for source in self.allowed_sources:
            if source.ae_title.strip() == ae_title and source.quiet_period_s is not None:
                return source.quiet_period_s
        return self.quiet_period_s


class Destination(_Section):
    """A PACS (or any storage SCP) that receives Haidang's results."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: TLSSettings | None = None
    web_url: str | None = Field(
        None, description="the PACS's web address (e.g. Orthanc's REST API); `haidang doctor` "
        "reads the PACS's clock there (DICOM has no time service)"
    )


class Route(_Section):
    """Match DICOM attributes (exact values, any of a list) to the analyses to run."""

    name: str
    match: dict[str, list[str]] = Field(default_factory=dict)
    analyses: list[str]


class ExportSettings(_Section):
    max_attempts: int = 8
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    calling_ae_title: str = "HAIDANG"
    rejected_max_attempts: int = Field(
        3, ge=1, description="tries before a delivery the receiver refused (HL7 AE/AR, HTTP 4xx) "
        "is dead-lettered")
    summary_image: bool = Field(
        True, description="also send the visual summary as a Secondary Capture (SR and GSPS "
        "always go)")


class ServingSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 3000
    imaging_port: int = Field(
        3001, description="port of the BentoML imaging service that `haidang serve` starts"
    )
    url: str | None = Field(None, description="split mode: base URL of the serving service")
    timeout_s: float = 10.0
    retries: int = 3
    models_dir: Path = Path("models")
    providers: list[str] = Field(
        default_factory=list,
        description="onnxruntime providers; empty = CUDA when available, else CPU",
    )
    threads: int = Field(
        0, ge=0, description="onnxruntime threads per embedded model session; 0 = one per core, "
        "or cores / gateway.job_workers in each job worker process"
    )
    drug_catalog: Path = Field(
        Path("var/drug-catalog.json"),
        description="the hospital's drug catalogue (MA_THUOC, brands -> ingredients) as stored "
        "by `haidang cdss import-catalog`; loaded at start when present",
    )


class LoggingSettings(_Section):
    third_party_level: str = Field(
        "WARNING", description="level of other libraries' loggers (highdicom, pynetdicom, "
        "uvicorn, bentoml ...); INFO or DEBUG to see them"
    )


class NotifySettings(_Section):
    webhook_url: str | None = None
    fhir_url: str | None = Field(
        None, description="FHIR R4 base URL; each report is a conditional update by identifier")
    patient_identifier_system: str = Field(
        "urn:haidang:patient-id", description="FHIR Identifier.system of the DICOM PatientID "
        "(the hospital's MRN system URI)")


class HL7Settings(_Section):
    """A RIS/HIS listener receiving HL7 v2 over MLLP: the result (ORU^R01) and a priority update."""

    host: str | None = Field(None, description="MLLP listener host; empty = no HL7")
    port: int = 2575
    sending_application: str = "HAIDANG"
    sending_facility: str = "HAIDANG"
    receiving_application: str = "RIS"
    receiving_facility: str = "HOSPITAL"
    priority_message: Literal["ORM^O01", "OMI^O23", "none"] = Field(
        "ORM^O01", description="order update sent for URGENT studies (priority STAT), by "
        "accession number")
    timeout_s: float = Field(10.0, description="seconds to wait for the ACK")


class SecuritySettings(_Section):
    development: bool = Field(
        False, description="switches off API keys and JWT checks; never in production"
    )
    api_keys: list[str] = Field(default_factory=list)
    jwks_file: Path | None = None
    allowed_issuers: list[str] = Field(default_factory=list)
    audit_log: Path = Path("var/audit.log")
    audit_key: str | None = Field(None, description="HMAC key for patient pseudonyms in audit")
    public_url: str | None = Field(
        None, description="external base URL of the CDSS (JWT aud = it + path); default: request"
    )
    max_body_bytes: int = Field(1_048_576, description="larger request bodies get 413")
    rate_limit_per_s: float = Field(0.0, description="API requests/s per caller; 0 = no limit")
    rate_limit_burst: int = Field(0, description="requests a caller may burst; 0 = 2 x rate")


class LearnedSettings(_Section):
    """Learned CDSS models: off unless they have earned a clinician's attention."""

    interaction_risk: Literal["auto", "on", "off"] = Field(
        "auto",
        description="predicted interactions (info alerts, labelled 'predicted, not from a "
        "reference'): auto = on only when the model card's precision measured on an external "
        "reference at the served threshold is at least 0.5 (the shipped model: below, so off)",
    )
    protocol_anomaly: Literal["auto", "on", "off"] = Field(
        "auto",
        description="'rarely prescribed for this diagnosis' alerts: auto = on only when the "
        "current model was trained on real XML 130 exports (`haidang train protocol` on the "
        "hospital's own history); the shipped model is a DEMO trained on synthetic data, so "
        "off; on = served even when synthetic (every alert then labelled DEMO)",
    )


class TrustedIssuer(_Section):
    """A CDS Hooks client (EHR) whose JWT signing keys come from its own JWKS."""

    iss: str
    jwks_url: str | None = Field(
        None, description="the EHR's JWKS URL; a token's jku is honoured only when equal to it"
    )
    jwks_file: Path | None = Field(None, description="the EHR's JWKS as a file")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.iss}: set exactly one of jwks_url and jwks_file")
        return self


class CdsHooksSettings(_Section):
    issuers: list[TrustedIssuer] = Field(
        default_factory=list, description="EHRs with their own JWKS (URL or file), besides "
        "security.jwks_file + security.allowed_issuers"
    )
    clock_skew_s: float = Field(30.0, ge=0, le=300, description="JWT exp/iat/nbf tolerance")
    jwks_refresh_s: float = Field(
        60.0, ge=0, description="an unknown kid re-reads a JWKS at most this often"
    )
    fhir_timeout_s: float = Field(
        2.0, gt=0, le=30, description="budget for reading missing prefetch from fhirServer"
    )
    fhir_servers: list[str] = Field(
        default_factory=list, description="fhirServer base URLs that may be read; empty = any"
    )
    ma_thuoc_systems: list[str] = Field(
        default_factory=lambda: ["urn:haidang:qd130:ma-thuoc"],
        description="Coding.system URIs read as QĐ 130 MA_THUOC codes",
    )


class OidcSettings(_Section):
    """Sign-in through the hospital's OpenID Connect provider (e.g. Keycloak)."""

    issuer: str = Field("", description="the provider's issuer URL (its discovery document is "
                        "ISSUER/.well-known/openid-configuration); empty: no OIDC sign-in")
    client_id: str = Field("", description="this client's ID at the provider (the ID token's "
                           "aud); required with issuer")
    client_secret: str | None = Field(None, description="confidential client's secret")
    scopes: str = Field("openid profile", description="scopes asked for; must hold openid")
    username_claim: str = Field("preferred_username",
                                description="ID token claim naming the user (else sub)")
    redirect_url: str | None = Field(
        None, description="public URL of /signin/oidc/callback; default: from the request")


class WorklistSettings(_Section):
    """The radiologists' worklist page: viewer link, times and sign-in sessions."""

    viewer_url: str | None = Field(
        None, description="URL template opening a study in the hospital's viewer; placeholders "
        "{StudyInstanceUID}, {AccessionNumber}, {OrthancSeriesID} (Orthanc's web viewer)")
    time_zone: str = Field("Asia/Ho_Chi_Minh",
                           description="the hospital's time zone for times on the page (IANA)")
    session_hours: float = Field(12.0, description="a sign-in lasts this long (hours)")
    oidc: OidcSettings | None = None


AlertSeverity = Literal["contraindicated", "major", "moderate", "minor"]


class CdssSettings(_Section):
    """Which alerts each channel shows: at or above (`minor` hidden by default); `info` always.

    `info` is a note (an ICD-10 remark, a switched-on model's prediction), not a severity."""

    min_severity_native: AlertSeverity = Field(
        "moderate", description="lowest alert severity the native API returns"
    )
    min_severity_cds_hooks: AlertSeverity = Field(
        "moderate", description="lowest alert severity returned as CDS Hooks cards"
    )


class Settings(_Section):
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    export: ExportSettings = Field(default_factory=ExportSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    hl7: HL7Settings = Field(default_factory=HL7Settings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    learned: LearnedSettings = Field(default_factory=LearnedSettings)
    cds_hooks: CdsHooksSettings = Field(default_factory=CdsHooksSettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    cdss: CdssSettings = Field(default_factory=CdssSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    language: str = Field("vi", description="default language of clinician-facing text: vi or en")
    time_zone: str = Field("Asia/Ho_Chi_Minh", description="the hospital's time zone (IANA name)")


class SettingsError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


def settings_env(data: dict, environ: dict[str, str] | None = None) -> dict[str, str]:
    """An environment carrying ``data`` as ``HAIDANG_<SECTION>`` variables (JSON).

    For a child process (a gateway worker, a benchmark's server) that must run with exactly
    these settings: every inherited ``HAIDANG_`` variable is dropped first."""
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if not k.startswith(ENV_PREFIX)}
    env.update({f"{ENV_PREFIX}{section.upper()}": json.dumps(value)
                for section, value in data.items()})
    return env


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == DEFAULT_CONFIG_ENV:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        if path[0] not in Settings.model_fields:
            continue
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the TOML file (``path``, else ``$HAIDANG_CONFIG``, else defaults) plus env overrides."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(DEFAULT_CONFIG_ENV)
    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(
                f"settings file {p} does not exist; copy haidang.example.toml and edit it"
            )
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {p} is not valid TOML: {exc}") from exc
    data = _merge(data, _env_overrides(environ))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc
