"""The `inpo` command line: thin wrappers that parse, build a config and call the library.

Every user-facing error is an :class:`inpo.errors.InpoError`; ``main`` prints it as one line and
exits with code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from inpo.errors import InpoError

app = typer.Typer(
    name="inpo",
    help="Nash learning from general preferences: INPO, SPPO, MNPO, EGPO, Nash-MD, iterative DPO/IPO.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except InpoError as e:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
