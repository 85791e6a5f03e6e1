"""The one command line, ``haidang``.

Each part of the product registers its own subcommands (``register(subparsers)``)
so a reader finds a command next to the code it drives. Registration must stay
cheap: heavy imports (torch, onnxruntime) happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from haidang.logs import FORMATS, configure
from haidang.settings import SettingsError

COMMAND_MODULES = (
    "dicom_gateway.cli",  # up, gateway, echo, send, exports
    "serving.cli",  # serve, cdss
    "training.cli",  # train, evaluate, models
    "training.learned_cli",  # xml130-synth
    "haidang.demo",  # demo
    "haidang.audit_cli",  # audit verify
    "dicom_gateway.dataset_cli",  # dataset export
    "haidang.config_cli",  # config reference, config show
    "haidang.doctor",  # doctor
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haidang",
        description="Hải Đăng: DICOM gateway, imaging triage and prescription checks",
    )
    parser.add_argument("--config", "-c", help="settings file (TOML); default $HAIDANG_CONFIG")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="text (default) or json: one JSON object per line, for a log "
                        "collector; default $HAIDANG_LOG_FORMAT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        configure(args.log_level, args.log_format)
    except ValueError as exc:  # a bad HAIDANG_LOG_FORMAT
        print(f"haidang: {exc}; set HAIDANG_LOG_FORMAT to text or json", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except SettingsError as exc:
        print(f"haidang: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
