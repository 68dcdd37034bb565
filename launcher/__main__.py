"""`python -m launcher COMMAND ...`: the `sl` command line (launcher/sl.py); what bin/<command> runs."""

from __future__ import annotations

import sys

from launcher import sl


def main(argv: list[str] | None = None) -> int:
    return sl.main(argv, prog="python -m launcher")


if __name__ == "__main__":
    sys.exit(main())
