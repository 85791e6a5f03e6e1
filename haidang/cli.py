"""The one command line, ``haidang``.

Each part of the product registers its own subcommands (``register(subparsers)``)
so a reader finds a command next to the code it drives. Registration must stay
cheap: heavy imports (torch, onnxruntime) happen inside the command handlers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haidang",
        description="Hải Đăng: DICOM gateway, imaging triage and prescription checks",
    )
    parser.add_argument("--config", "-c", help="settings file (TOML); default $HAIDANG_CONFIG")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except SettingsError as exc:
        print(f"haidang: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
