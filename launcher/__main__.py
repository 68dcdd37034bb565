"""`python -m launcher COMMAND ...`: what bin/<command> runs."""

from __future__ import annotations

import sys

from launcher import cli, planref, report

COMMANDS = {"launch": cli.launch_main, "status": cli.status_main, "kill": cli.kill_main, "resume": cli.resume_main,
            "logs": cli.logs_main, "report": report.main, "schema": planref.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m launcher {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
