"""``haidang doctor``: check a deployment before (or instead of) finding out from a failure.

Each check reads the same settings the services read and says, in Vietnamese and in
English, what to fix. Nothing is changed: the spool gets one probe file (removed), the
database is opened read-only and its tables compared with the schema the gateway creates,
each destination gets one C-ECHO, each model's file is hashed against its card and
loaded once. The exit status is 1 when any check fails, so a deployment script can stop.

The clock: DICOM has no time service (a C-ECHO carries no time), so the PACS's clock is
read from its web server (``destinations[].web_url``): Orthanc's ``/tools/now`` (UTC),
else the HTTP ``Date`` header, with one-second resolution, and only where that address
is set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CLOCK_WARN_S, CLOCK_FAIL_S = 2.0, 60.0
CERT_WARN_DAYS = 30


@dataclass(frozen=True)
class Finding:
    status: str  # OK, WARN or FAIL
    check: str
    detail: str
    fix_vi: str = ""
    fix_en: str = ""

    def lines(self) -> list[str]:
        out = [f"[{self.status:^4}] {self.check}: {self.detail}"]
        if self.fix_vi:
            out.append(f"       Cách sửa: {self.fix_vi}")
        if self.fix_en:
            out.append(f"       To fix:   {self.fix_en}")
        return out


def check_ports(settings) -> list[Finding]:
    from haidang.ground.ports import Port, in_use

    out = []
    for port in (Port("gateway.port", settings.gateway.host, settings.gateway.port),
                 Port("serving.port", settings.serving.host, settings.serving.port),
                 Port("serving.imaging_port", settings.serving.host,
                      settings.serving.imaging_port)):
        if in_use(port):
            out.append(Finding(
                WARN, f"port {port}", f"{port.host}:{port.port} is in use",
                f"nếu Haidang đang chạy thì đó là nó; nếu không, dừng chương trình đang dùng "
                f"cổng này (`ss -ltnp`) hoặc đổi {port.setting}",
                f"if Haidang is running, that is it; otherwise stop what listens there "
                f"(`ss -ltnp`) or change {port.setting}"))
        else:
            out.append(Finding(OK, f"port {port}", f"{port.host}:{port.port} is free"))
    return out


def check_spool(settings) -> list[Finding]:
    g = settings.gateway
    spool = Path(g.spool_dir)
    where = spool if spool.exists() else next(p for p in spool.parents if p.exists())
    probe = where / f".haidang-doctor-{os.getpid()}"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"probe")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        return [Finding(FAIL, "spool", f"{where} is not writable: {exc.strerror}",
                        f"cho tài khoản chạy Haidang quyền ghi vào {where} (chown/chmod)",
                        f"give the account running Haidang write access to {where} "
                        "(chown/chmod)")]
    free = shutil.disk_usage(where).free
    detail = (f"{spool} writable; {free / 2**30:.1f} GiB free, watermark "
              f"gateway.min_free_bytes {g.min_free_bytes / 2**30:.1f} GiB")
    if free < g.min_free_bytes:
        return [Finding(FAIL, "spool", detail + ": C-STORE would answer 0xA700",
                        "giải phóng dung lượng đĩa hoặc chuyển gateway.spool_dir sang đĩa lớn hơn",
                        "free disk space or move gateway.spool_dir to a larger disk")]
    return [Finding(OK, "spool", detail)]


def _expected_tables() -> dict[str, set[str]]:
    """Tables and columns of the gateway's schema (``dicom_gateway.index.SCHEMA``)."""
    from dicom_gateway.index import SCHEMA

    tables = {}
    for name, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\)", SCHEMA, re.S):
        cols = {line.split()[0] for line in body.strip().splitlines()
                if line.strip() and line.split()[0].upper() not in
                ("PRIMARY", "UNIQUE", "FOREIGN", "CHECK", "CONSTRAINT")}
        tables[name] = cols
    return tables


def check_database(settings) -> list[Finding]:
    from haidang.ground.logs import redact_url

    url = settings.gateway.database_url
    shown = redact_url(url)
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if not path.exists():
                return [Finding(WARN, "database", f"{shown}: no database yet",
                                "Haidang tạo cơ sở dữ liệu ở lần chạy đầu; kiểm tra đường dẫn "
                                "gateway.database_url nếu đã từng chạy",
                                "Haidang creates it at its first start; check "
                                "gateway.database_url if it ran before")]
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            actual = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")}
                      for (t,) in conn.execute("SELECT name FROM sqlite_master "
                                               "WHERE type='table'")}
            conn.close()
        else:
            import psycopg

            with psycopg.connect(url, connect_timeout=5) as conn:
                rows = conn.execute("SELECT table_name, column_name FROM "
                                    "information_schema.columns WHERE table_schema = "
                                    "current_schema()").fetchall()
            actual = {}
            for table, column in rows:
                actual.setdefault(table, set()).add(column)
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises: not reachable
        return [Finding(FAIL, "database", f"{shown} not reachable: {type(exc).__name__}: {exc}",
                        "kiểm tra máy chủ cơ sở dữ liệu, mật khẩu và gateway.database_url",
                        "check the database server, its password and gateway.database_url")]
    missing = [f"{t}.{c}" for t, cols in _expected_tables().items()
               for c in sorted(cols - actual.get(t, set()))]
    if missing:
        return [Finding(FAIL, "database", f"{shown}: schema differs from this version's "
                        f"(missing {', '.join(missing[:6])})",
                        "cơ sở dữ liệu của phiên bản khác: sao lưu rồi chạy phiên bản đã tạo "
                        "nó, hoặc dùng cơ sở dữ liệu mới",
                        "the database belongs to another version: back it up, then run the "
                        "version that made it, or start from a new database")]
    return [Finding(OK, "database", f"{shown} reachable; schema as this version expects "
                    f"({len(_expected_tables())} tables)")]


def check_destinations(settings) -> list[Finding]:
    from dicom_gateway.network import tls_context
    from dicom_gateway.scu import echo

    out = []
    for dest in settings.destinations:
        name = f"destination {dest.name}"
        try:
            tls = tls_context(dest.tls, server=False) if dest.tls else None
            ok, detail = echo(dest.host, dest.port, dest.ae_title,
                              settings.export.calling_ae_title, timeout=5, tls=tls)
        except Exception as exc:  # noqa: BLE001 - a TLS file problem is reported by check_tls
            ok, detail = False, f": {type(exc).__name__}: {exc}"
        where = f"{dest.ae_title}@{dest.host}:{dest.port}"
        if ok:
            out.append(Finding(OK, name, f"C-ECHO {where} answered Success"))
        else:
            out.append(Finding(
                FAIL, name, f"C-ECHO {where} failed{detail}",
                f"kiểm tra PACS đang chạy, địa chỉ/cổng/AE title, và PACS đã khai báo AE "
                f"{settings.export.calling_ae_title} của Haidang",
                f"check that the PACS is up, its host, port and AE title, and that it knows "
                f"Haidang's AE title {settings.export.calling_ae_title}"))
    if not settings.destinations:
        out.append(Finding(WARN, "destinations", "none configured: results stay in Haidang",
                           "thêm [[destinations]] để gửi kết quả về PACS",
                           "add [[destinations]] to send results back to the PACS"))
    return out


def _reachable(url: str) -> str | None:
    """None when a TCP connection to the URL's host and port opens, else why not."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=5):
            return None
    except OSError as exc:
        return str(exc)


def check_receivers(settings) -> list[Finding]:
    out = []
    for setting, url in (("notify.fhir_url", settings.notify.fhir_url),
                         ("notify.webhook_url", settings.notify.webhook_url)):
        if not url:
            out.append(Finding(OK, setting, "not configured (nothing to check)"))
            continue
        why = _reachable(url)
        if why is None:
            out.append(Finding(OK, setting, f"{url} reachable"))
        else:
            out.append(Finding(FAIL, setting, f"{url} not reachable: {why}",
                               f"kiểm tra máy nhận, tường lửa và {setting}",
                               f"check the receiver, the firewall and {setting}"))
    out.append(Finding(OK, "HL7 v2", "this version has no HL7 v2 receiver setting (nothing to "
                       "check)"))
    return out


def check_models(settings) -> list[Finding]:
    import onnxruntime as ort

    from serving.registry import ModelRegistry

    registry = ModelRegistry(settings.serving.models_dir)
    out = []
    for name in registry.names():
        try:
            mv = registry.current(name, verify=True)
            ort.InferenceSession(str(mv.onnx_path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - integrity, a missing file, a broken graph
            out.append(Finding(FAIL, f"model {name}", f"{type(exc).__name__}: {exc}",
                               "khôi phục models/ từ bản phát hành (git checkout models/) "
                               "hoặc huấn luyện và đăng ký lại",
                               "restore models/ from the release (git checkout models/) or "
                               "re-train and re-register"))
            continue
        out.append(Finding(OK, f"model {name}", f"{mv.version} loads; sha256 "
                           f"{mv.sha256[:12]}… matches its card"))
    if not out:
        out.append(Finding(FAIL, "models", f"no model under {settings.serving.models_dir}",
                           "đặt serving.models_dir là thư mục models/ của bản phát hành",
                           "point serving.models_dir at the release's models/ folder"))
    return out


def _tls_findings(where: str, tls) -> list[Finding]:
    from cryptography import x509

    out = []
    for field in ("cert_file", "key_file", "ca_file"):
        path = getattr(tls, field)
        if path is None:
            continue
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            out.append(Finding(FAIL, f"TLS {where}.{field}", f"{path}: {exc.strerror}",
                               f"đặt tệp đúng chỗ và cho tài khoản chạy Haidang quyền đọc {path}",
                               f"put the file in place and let Haidang's account read {path}"))
            continue
        if field == "key_file":
            out.append(Finding(OK, f"TLS {where}.{field}", f"{path} readable"))
            continue
        cert = x509.load_pem_x509_certificate(data)
        left = (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400
        until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
        if left < 0:
            out.append(Finding(FAIL, f"TLS {where}.{field}", f"{path} expired on {until}",
                               "xin chứng chỉ mới từ CA của bệnh viện và thay tệp",
                               "get a new certificate from the hospital CA and replace the file"))
        elif left < CERT_WARN_DAYS:
            out.append(Finding(WARN, f"TLS {where}.{field}",
                               f"{path} expires on {until} ({left:.0f} days)",
                               "gia hạn chứng chỉ trước ngày hết hạn",
                               "renew the certificate before it expires"))
        else:
            out.append(Finding(OK, f"TLS {where}.{field}", f"{path} valid until {until}"))
    return out


def check_tls(settings) -> list[Finding]:
    out = []
    if settings.gateway.tls:
        out += _tls_findings("gateway.tls", settings.gateway.tls)
    for dest in settings.destinations:
        if dest.tls:
            out += _tls_findings(f"destinations[{dest.name}].tls", dest.tls)
    return out or [Finding(OK, "TLS", "not configured (nothing to check)")]


def _remote_time(httpx, url: str) -> tuple[float, float, float, str]:
    """(the peer's time, ours before, ours after, how it was read): Orthanc's
    ``/tools/now`` (UTC) where it answers, else the HTTP ``Date`` header."""
    t0 = time.time()
    r = httpx.get(f"{url}/tools/now", timeout=5)
    t1 = time.time()
    if r.status_code == 200 and re.fullmatch(r"\d{8}T\d{6}", r.text.strip()):
        when = datetime.strptime(r.text.strip(), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
        return when.timestamp(), t0, t1, f"Orthanc {url}/tools/now"
    if "date" not in r.headers:
        raise LookupError("neither Orthanc's /tools/now nor an HTTP Date header")
    return parsedate_to_datetime(r.headers["date"]).timestamp(), t0, t1, f"HTTP Date of {url}"


def check_clock(settings) -> list[Finding]:
    import httpx

    out = []
    for dest in settings.destinations:
        name = f"clock vs {dest.name}"
        if not dest.web_url:
            out.append(Finding(WARN, name, "not checked: DICOM has no time service (C-ECHO "
                               "carries no time) and destinations[].web_url is not set",
                               "đặt web_url (ví dụ địa chỉ REST của Orthanc) để so sánh giờ",
                               "set web_url (e.g. Orthanc's REST address) to compare clocks"))
            continue
        try:
            theirs, t0, t1, how = _remote_time(httpx, dest.web_url.rstrip("/"))
        except Exception as exc:  # noqa: BLE001 - unreachable, or no time given
            out.append(Finding(WARN, name, f"{dest.web_url} gave no time: "
                               f"{type(exc).__name__}: {exc}",
                               "kiểm tra web_url", "check web_url"))
            continue
        # whole seconds (truncated), stamped between t0 and t1
        diff = theirs + 0.5 - (t0 + t1) / 2
        detail = f"PACS clock {diff:+.1f} s from ours ({how}, ±1 s)"
        if abs(diff) > CLOCK_FAIL_S:
            status = FAIL
        elif abs(diff) > CLOCK_WARN_S + 1:
            status = WARN
        else:
            status = OK
        out.append(Finding(status, name, detail, *(() if status == OK else (
            "đồng bộ giờ cả hai máy với cùng máy chủ NTP (chronyc tracking)",
            "synchronise both machines with the same NTP server (chronyc tracking)"))))
    return out


CHECKS = (check_ports, check_spool, check_database, check_destinations, check_receivers,
          check_models, check_tls, check_clock)


def run_checks(settings) -> list[Finding]:
    findings = []
    for check in CHECKS:
        try:
            findings += check(settings)
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            findings.append(Finding(FAIL, check.__name__.removeprefix("check_"),
                                    f"the check itself failed: {type(exc).__name__}: {exc}"))
    return findings


def cmd_doctor(args) -> int:
    from haidang.ground.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        for line in Finding(FAIL, "settings", str(exc),
                            "sửa tệp cấu hình theo thông báo trên (xem docs/configuration.md)",
                            "fix the settings file as the message says (see "
                            "docs/configuration.md)").lines():
            print(line)
        return 1
    source = args.config or os.environ.get("HAIDANG_CONFIG") or "defaults and environment"
    findings = [Finding(OK, "settings", f"{source} parsed"), *run_checks(settings)]
    for finding in findings:
        for line in finding.lines():
            print(line)
    failed = sum(f.status == FAIL for f in findings)
    warned = sum(f.status == WARN for f in findings)
    print(f"{len(findings)} checks: {failed} failed, {warned} warnings"
          f" / {len(findings)} mục: {failed} lỗi, {warned} cảnh báo")
    sys.stdout.flush()
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check this deployment and say what to fix (vi/en)")
    p.set_defaults(handler=cmd_doctor)
