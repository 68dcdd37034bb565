# PYTHON_ARGCOMPLETE_OK
"""`sl`: the one command line (console script `sl`, `python -m launcher`, and what bin/* run).

`sl COMMAND ...` hands the rest of the line to that command's `main(argv) -> int`, imported only
then: this module and the parsers `sl --help`, `sl CMD --help`, `--version` and completion need
are stdlib only, so they answer at once, before the venv exists and without ray or torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import textwrap
import tomllib
from dataclasses import dataclass

from launcher import cliargs, exitcodes, shipped

DIST = "safety-launcher"


@dataclass(frozen=True)
class Command:
    summary: str
    target: str                  # "module:function", imported when the command runs
    checkout_only: bool = False  # lives outside the installed packages (bench/)


COMMANDS: dict[str, Command] = {
    "launch": Command("validate and run a plan (--dry-run, --detach, --json)", "launcher.cli:launch_main"),
    "status": Command("a run's jobs from its journal; the exit status says the run's state", "launcher.cli:status_main"),
    "logs": Command("a job's rank logs, or follow them", "launcher.cli:logs_main"),
    "kill": Command("stop a run or one job, leaving no process behind", "launcher.cli:kill_main"),
    "resume": Command("continue a run after its driver died or after kill", "launcher.cli:resume_main"),
    "report": Command("a run's report: results, memory, plots", "launcher.report:main"),
    "cluster": Command("start, join, inspect and stop a Ray cluster (up, join, status, down)", "launcher.clusterctl.cli:main"),
    "schema": Command("the plan's JSON Schema or its reference tables", "launcher.planref:main"),
    "bench": Command("the benchmarks side by side (a source checkout only)", "bench.__main__:main", checkout_only=True),
    "examples": Command("where the shipped example plans and DeepSpeed configs are", "launcher.sl:examples_main"),
}

COMPLETION = 'eval "$(register-python-argcomplete sl)"'


def version() -> str:
    """The installed distribution's version; in a checkout never installed, pyproject.toml's."""
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError:
        try:
            with open(shipped.CHECKOUT / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"


def build_parser(prog: str = "sl") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Run LLM safety fine-tuning plans on Ray with DeepSpeed, and look after the runs.",
        epilog=f"{textwrap.fill(exitcodes.HELP + '.', 100)}\n\nshell completion (bash/zsh): {COMPLETION}\n"
               f"`{prog} COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s ({DIST}) {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, cmd in COMMANDS.items():
        if name in cliargs.PARSERS:   # full options here too, so completion offers them
            full = cliargs.PARSERS[name](f"{prog} {name}")
            sub.add_parser(name, parents=[full], add_help=False, help=cmd.summary,
                           description=full.description, epilog=full.epilog)
        else:
            s = sub.add_parser(name, add_help=False, help=cmd.summary)
            s.add_argument("args", nargs=argparse.REMAINDER)
    return p


def wants(args: list[str], *flags: str) -> bool:
    """One of flags among a command's arguments (before a `--`)."""
    for a in args:
        if a == "--":
            return False
        if a in flags:
            return True
    return False


def wants_help(args: list[str]) -> bool:
    return wants(args, "-h", "--help")


def _exit_code(e: SystemExit) -> int:
    return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)


def main(argv: list[str] | None = None, prog: str = "sl") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(prog)
    if "_ARGCOMPLETE" in os.environ:   # only while the shell asks for completions
        import argcomplete
        argcomplete.autocomplete(parser)
    if not argv:
        parser.print_usage(sys.stderr)
        print(f"{prog}: a COMMAND is needed; `{prog} --help` lists them", file=sys.stderr)
        return exitcodes.USAGE
    name, rest = argv[0], argv[1:]
    if name in COMMANDS and wants(rest, "--version") and not wants_help(rest):   # bin/launch --version
        print(f"{prog} ({DIST}) {version()}")
        return exitcodes.OK
    if name not in COMMANDS or (name in cliargs.PARSERS and wants_help(rest)):
        try:   # --help, --version, an unknown command: argparse answers and exits
            parser.parse_args(argv)
        except SystemExit as e:
            return _exit_code(e)
        return exitcodes.USAGE
    cmd = COMMANDS[name]
    module, func = cmd.target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:
        if wants_help(rest):   # no venv yet: say what the command is without it
            print(f"usage: {prog} {name} ...\n\n{cmd.summary}\n\n(the full option list needs the environment: "
                  f"{e.name or e} is not installed; any bin/ command except --help sets it up)")
            return exitcodes.OK
        if cmd.checkout_only and (e.name or "").split(".")[0] == module.split(".")[0]:
            print(f"{prog} {name}: {module.split('.')[0]}/ is part of a source checkout, not the installed package",
                  file=sys.stderr)
            return exitcodes.USAGE
        raise
    return int(fn(rest))


def examples_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sl examples", description=COMMANDS["examples"].summary + ".")
    ap.add_argument("--path", metavar="PLAN", help="print only this plan's full path (smoke or smoke.yaml)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    plans, ds = shipped.plans_dir(), shipped.ds_configs_dir()
    if args.path:
        plan = plans / (args.path if args.path.endswith(".yaml") else f"{args.path}.yaml")
        if not plan.is_file():
            print(f"no shipped plan {args.path!r}; shipped: {', '.join(p.stem for p in sorted(plans.glob('*.yaml')))}",
                  file=sys.stderr)
            return exitcodes.USAGE
        print(plan)
        return exitcodes.OK
    print(f"plans: {plans}")
    for p in sorted(plans.glob("*.yaml")):
        print(f"  {p.name}")
    print(f"deepspeed configs (plan key `deepspeed: NAME`): {ds}")
    print("  " + " ".join(sorted(p.stem for p in ds.glob("*.json"))))
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
