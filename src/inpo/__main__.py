"""``python -m inpo`` and the ``inpo`` script: a Ctrl-C even while the libraries import is one line, exit 130."""

import sys


def entry() -> None:
    try:
        from inpo.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted (Ctrl-C)\n")
        sys.exit(130)
    main()


if __name__ == "__main__":
    entry()
