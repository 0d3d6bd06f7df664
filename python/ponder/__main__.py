"""``python -m ponder``: print versions and backends (paste this into a bug report)."""

from . import info

if __name__ == "__main__":
    print(info())
