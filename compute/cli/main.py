"""The ``rosetta`` command: ``rosetta run`` runs the engine, ``rosetta dlq ...`` operates the DLQ.

Every error ends the command with one line on stderr and the exit code
``compute/error_codes.py`` gives it (documented in the README).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from compute.cli.dlq_commands import dlq
from compute.cli.output import setup_logging
from compute.cli.top import top
from compute.error_codes import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, error_code
from config.errors import RosettaError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default=None,
    metavar="LEVEL",
    help="DEBUG, INFO, WARNING or ERROR (default: INFO for run, WARNING for dlq)",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """Rosetta CDC engine."""
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    if log_level is not None:
        setup_logging(log_level)


@cli.command()
@click.option("--pipelines", help="pipelines TOML file (overrides ROSETTA_PIPELINES_FILE)")
@click.pass_context
def run(ctx: click.Context, pipelines: str | None) -> None:
    """Run the engine in the foreground until SIGTERM/SIGINT."""
    if ctx.obj["log_level"] is None:
        setup_logging("INFO")
    from compute.engine.engine import Engine
    from config.pipeline_source import load_pipeline_specs
    from config.settings import load_settings, prepare_directory

    settings = load_settings()
    prepare_directory(settings.dlq.base_path, "DLQ_BASE_PATH")
    # Sources write their offsets there after the first batch: an unusable
    # directory must stop start-up, not the pipeline after its first write.
    prepare_directory(settings.state_path, "ROSETTA_STATE_PATH")
    if pipelines:
        from dataclasses import replace

        settings = replace(settings, pipelines_file=Path(pipelines))
    specs = load_pipeline_specs(settings)
    from compute.runtime.gc_tuning import tune_for_streaming

    tune_for_streaming()
    ctx.exit(Engine(settings, specs).run_forever())


cli.add_command(dlq)
cli.add_command(top)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns its exit code."""
    try:
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        code = cli.main(args=argv, prog_name="rosetta", standalone_mode=False)
        if isinstance(code, int):
            return code
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        click.echo("rosetta: aborted", err=True)
        return EXIT_FAILED
    except click.ClickException as error:
        error.show()
        return EXIT_CONFIG
    except RosettaError as error:
        click.echo(f"rosetta: {error}", err=True)
        return error_code(error).exit_code
    except KeyboardInterrupt:
        click.echo("rosetta: interrupted", err=True)
        return EXIT_FAILED
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
