"""The ``harness`` command.

Each sub-command lives in ``harness/commands/<name>.py`` and exposes ``register(app)``; this
module only assembles them and turns user-facing errors into a one-line message.
"""

from __future__ import annotations

import importlib
import sys

import typer

app = typer.Typer(
    name="harness",
    help="Instruction-tuning research harness: train, evaluate, run grids, regenerate tables.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in the order of the data flow. A module missing here is simply not offered.
COMMAND_MODULES = ("generate", "convert", "data", "train", "plan", "eval", "grid", "table")

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"harness.commands.{_name}")
    except ModuleNotFoundError as exc:  # a command module not written yet
        if exc.name != f"harness.commands.{_name}":
            raise
        continue
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, printing user errors as ``error: ...`` without a traceback."""
    from harness.errors import HarnessError

    try:
        app(args=argv, standalone_mode=False)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors and friends
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()
