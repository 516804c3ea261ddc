"""``python -m smee`` / ``smee``: offline tools for operators; the server itself runs under twistd.

The server stays a twistd plugin (``twistd smee``) because twistd owns
daemonising, privilege dropping and logging. Commands here never bind a
port, so they need none of that and can be run by anyone on any host that
has the configuration.
"""

from __future__ import annotations

import os
import sys

from smee import __version__

USAGE = """\
usage: smee COMMAND [options]

commands:
  explain   what a machine (--mac) would get at each boot stage, computed offline
            from the configured backend; 'smee explain --help' for its options

The server itself runs as: twistd smee [options]
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a command; returns the exit status (2 for usage errors, as argparse does)."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "--version":
        print(f"smee {__version__}")
        return 0
    if command == "explain":
        from smee.explain import main as explain_main

        return explain_main(rest)
    sys.stderr.write(f"smee: unknown command {command!r}\n{USAGE}")
    return 2


def run() -> int:
    """main(), quiet when the reader goes away (``smee explain … | head``): no traceback for that."""
    try:
        status = main()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # Python's documented recipe: point stdout at /dev/null so the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(run())
