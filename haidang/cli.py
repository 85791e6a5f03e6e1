"""The one command line, ``haidang``.

Each part of the product registers its own subcommands (``register(subparsers)``)
so a reader finds a command next to the code it drives. Registration must stay
cheap: heavy imports (torch, onnxruntime) happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import sys

from dicom_gateway import cli as gateway_cli  # gateway, echo, send, exports
from dicom_gateway import (
    dataset_cli,  # dataset export
    users_cli,  # users add/disable/enable
)
from haidang import audit_cli, config_cli, demo, doctor, up  # audit; config; demo; doctor; up
from haidang.ground.logs import FORMATS, configure
from haidang.ground.settings import SettingsError
from serving import cli as serving_cli  # serve, cdss
from training import cli as training_cli  # train, evaluate, models
from training import learned_cli  # xml130-synth

COMMAND_MODULES = (up, gateway_cli, serving_cli, training_cli, learned_cli, demo, audit_cli,
                   dataset_cli, users_cli, config_cli, doctor)


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
    for module in COMMAND_MODULES:
        module.register(sub)
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
