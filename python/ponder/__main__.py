"""``python -m ponder``: print versions and backends (paste this into a bug report);
``python -m ponder COMMAND ...`` runs the ``ponder`` command line (the same as ``ponder COMMAND``,
for an environment whose scripts folder is not on PATH)."""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1:
        from .cli import main

        sys.exit(main(sys.argv[1:]))
    from . import info

    print(info())
