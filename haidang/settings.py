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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    max_associations: int = Field(
        64, ge=1, description="associations open at once per listener process; more are "
        "rejected as transient (the sender retries)"
    )
    stop_grace_s: float = Field(
        20.0, ge=0, description="on stop: time for instances being received and running "
        "analyses to finish; what is left is taken back at the next start"
    )


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


class LoggingSettings(_Section):
    third_party_level: str = Field(
        "WARNING", description="level of other libraries' loggers (highdicom, pynetdicom, "
        "uvicorn, bentoml ...); INFO or DEBUG to see them"
    )


class NotifySettings(_Section):
    webhook_url: str | None = None
    fhir_url: str | None = None


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


class Settings(_Section):
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    export: ExportSettings = Field(default_factory=ExportSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    language: str = Field("vi", description="default language of clinician-facing text: vi or en")


class SettingsError(ValueError):
    """The configuration cannot be used; the message says which setting and why."""


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
