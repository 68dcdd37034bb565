"""How a run or one of its jobs is stopped: bin/kill requests, the driver's signals, and a journal
that can no longer be written. Part of the `Controller` (a mixin: one concern per file); the
releases it begins come back through the controller's own events.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Callable

from launcher import rundir
from launcher.control import requests as control
from launcher.control.executor import Executor, ReleaseDone, ReleaseOrder
from launcher.control.records import JobRun
from launcher.control.states import LIVE, TERMINAL, JobState
from launcher.journal import Journal, JournalError
from launcher.layout import RunDir
from launcher.node.messages import Released

log = logging.getLogger("launcher")
RELEASE_WAIT_S = 200.0  # on top of the grace: how long a stop waits for the releases it began


class Stopping:
    """The controller's stops. Uses its state (below) and its handlers `_say`, `_isolated`,
    `_begin_release`, `_end_job`, `_dispatch` and `_on_release_done`."""
    jobs: dict[str, JobRun]
    ex: Executor
    rd: RunDir
    journal: Journal
    clock: Callable[[], float]
    run_id: str
    stop_requested: threading.Event

    def _handle_requests(self) -> bool:
        """bin/kill requests; True when the whole run was killed."""
        for path, req in control.pending(self.rd.root):
            path.unlink(missing_ok=True)
            grace = 0.0 if req.force else 10.0
            why = f"killed by {req.by}" + (" (forced)" if req.force else "")
            if req.job is None:
                self._kill_all(why, grace)
                return True
            jr = self.jobs.get(req.job)
            if jr is None or jr.state in TERMINAL:
                self._say(f"kill request for {req.job}: nothing to kill", req.job)
                continue
            self._isolated(jr, lambda j: self._kill_job(j, why, grace))
        return False

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(*_: object) -> None:
            self.stop_requested.set()
            self.ex.wake()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, stop)

    def _kill_job(self, jr: JobRun, why: str, grace: float = 10.0) -> None:
        """Placing, starting or running: its reservation and ranks go first (ranks of a start still
        in flight are stopped too: a host runs its calls in order)."""
        if jr.state == JobState.STOPPING:
            jr.kill_reason = why
            return
        if jr.current is not None and not jr.current.ended and jr.state in LIVE:
            self._begin_release(jr, grace, dump_stacks=False,
                                then=lambda res: self._end_job(jr, "killed", why, codes=res.exit_codes))
            return
        self._end_job(jr, "killed", why)

    def _kill_all(self, why: str, grace: float = 10.0) -> None:
        for jr in self.jobs.values():
            if jr.state not in TERMINAL:
                self._isolated(jr, lambda j: self._kill_job(j, why, grace))
        # The releases run side by side; wait for all of them, and put right those that never answer.
        waiting = {(jr.job.name, jr.current.n) for jr in self.jobs.values()
                   if jr.stopping is not None and jr.current is not None}
        self._drain(waiting, self.clock() + grace + RELEASE_WAIT_S, self._dispatch)
        for jr in self.jobs.values():
            if jr.stopping is not None:
                late = Released(notes=[f"the release did not finish within {grace + RELEASE_WAIT_S:.0f}s"])
                self._isolated(jr, lambda j: self._on_release_done(j, late))
        self._say(f"run stopped: {why}")

    def _journal_failed(self, e: JournalError) -> str:
        """The journal cannot be written (disk full, most often): stop every rank first (that needs
        no journal, and frees what they would write), then give back the space reserved at the
        start and close the journal consistently: the run and its jobs end failed, with why."""
        log.error("the journal cannot be written: %s; stopping the run", e)
        waiting = set()
        for jr in self.jobs.values():
            a = jr.current
            if a is None or a.ended:
                continue
            if jr.state in LIVE:
                self.ex.release(ReleaseOrder(jr.job.name, a.n, grace=2.0))
            if jr.state in LIVE or jr.stopping is not None:
                waiting.add((jr.job.name, a.n))
        self._drain(waiting, self.clock() + 2.0 + RELEASE_WAIT_S, lambda _ev: None)
        rundir.free_reserve(self.rd)
        why = f"the journal could not be written ({e}); free space and bin/resume {self.run_id}"
        try:
            for jr in self.jobs.values():
                a = jr.current
                if a is not None and a.recorded and not a.ended:
                    self.journal.end_attempt(jr.job.name, a.n, "failed", "lost", {}, a.step, detail=why)
                if jr.state not in TERMINAL:
                    self.journal.set_job(jr.job.name, state="failed", reason=why)
            self.journal.set_run(state="failed", ended=time.time())
            self.journal.event("run", f"run failed: {why}")
        except JournalError as again:
            log.error("the journal still cannot be written (%s): bin/status will show the driver gone", again)
        return "failed"

    def _drain(self, waiting: set[tuple[str, int]], deadline: float, done: Callable[[ReleaseDone], None]) -> None:
        """Only releases, until those in `waiting` are over or the deadline passes (a stop)."""
        while waiting and self.clock() < deadline:
            for ev in self.ex.wait(min(deadline, self.clock() + 1.0)):
                if isinstance(ev, ReleaseDone) and (ev.job, ev.attempt) in waiting:
                    waiting.discard((ev.job, ev.attempt))
                    done(ev)
