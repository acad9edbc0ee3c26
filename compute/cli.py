"""The ``rosetta`` command: ``rosetta run`` runs the engine in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from config.errors import ConfigError, RosettaError

# Exit codes (documented in the README): 0 clean stop, 1 runtime error or a
# failed pipeline, 2 configuration error.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


def _run(args: argparse.Namespace) -> int:
    from compute.engine import Engine, load_pipeline_specs
    from config.settings import load_settings, prepare_directory

    settings = load_settings()
    prepare_directory(settings.dlq.base_path, "DLQ_BASE_PATH")
    if args.pipelines:
        from dataclasses import replace
        from pathlib import Path

        settings = replace(settings, pipelines_file=Path(args.pipelines))
    specs = load_pipeline_specs(settings)
    return Engine(settings, specs).run_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rosetta", description="Rosetta CDC engine")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the engine in the foreground until SIGTERM/SIGINT")
    run.add_argument("--pipelines", help="pipelines TOML file (overrides ROSETTA_PIPELINES_FILE)")
    run.set_defaults(handler=_run)
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level {args.log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s - %(message)s", stream=sys.stderr
    )
    try:
        return int(args.handler(args))
    except RosettaError as error:
        print(f"rosetta: {error}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(error, ConfigError) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
