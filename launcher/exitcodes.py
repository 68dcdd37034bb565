"""What the commands' exit statuses mean, and the one for a run's state (`sl status`).

Scripts and CI gate on these (`sl status RUN || ...`), so they are a contract like status --json.
Stdlib only: the help text quotes them without the venv.
"""

from __future__ import annotations

OK = 0            # the command did what it was asked; status: the run succeeded
FAILED = 1        # the command failed; status: the run failed or was killed
USAGE = 2         # bad arguments, a bad plan, no such run: nothing was done
RUNNING = 3       # status: the run is pending or running, its driver alive
INTERRUPTED = 4   # status: the journal says running but no driver holds it (sl resume continues it)

HELP = ("exit status: 0 succeeded / done, 1 failed or killed, 2 usage error (bad arguments, bad plan, "
        "no such run), 3 running (status), 4 interrupted: driver gone, `sl resume RUN` continues it (status)")


def for_run(state: str, driver: str | None) -> int:
    """`sl status`'s exit status for a run's journal state and status.driver_state()."""
    if state == "succeeded":
        return OK
    if state in ("pending", "running", "starting"):
        return INTERRUPTED if driver == "gone" else RUNNING
    return FAILED   # failed, killed, and any state this version does not know: not a success
