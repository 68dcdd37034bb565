"""The controller run end to end on an in-memory executor and a fake clock: no Ray, no processes.

Each test runs a real plan and a real SQLite journal through `Controller.run` and checks what a
researcher would look at afterwards: job states, attempts, decisions, and which orders went out.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from launcher import rundir
from launcher.control import requests as control
from launcher.control.controller import Controller
from launcher.control.executor import NodesChanged, ReleaseOrder, ReserveOrder, Spawned, StartOrder
from launcher.journal import Journal
from launcher.layout import RunDir
from launcher.plan import Plan, load_plan
from launcher.resources import ClusterShape, NodeShape
from launcher.scheduling.books import Books
from tests.unit.launcher.control.inmemory import Clock, InMemoryExecutor, Script

TWO_NODES = ClusterShape((NodeShape("n0", 2), NodeShape("n1", 2)))


def make_run(tmp_path: Path, jobs: str, cluster: ClusterShape = TWO_NODES, run_id: str = "r1") -> tuple[Plan, RunDir]:
    path = tmp_path / "plan.yaml"
    path.write_text("defaults:\n  method: synthetic\n  resources: {nodes: 1, gpus_per_node: 1}\n"
                    "  retry: {max_restarts: 2, backoff: 5}\njobs:\n" + textwrap.indent(textwrap.dedent(jobs), "  "))
    plan = load_plan(path, cluster=cluster)
    rd = rundir.create(plan, tmp_path / "runs", run_id)
    return plan, rd


def open_journal(plan: Plan, rd: RunDir) -> Journal:
    j = Journal(rd.db)
    if j.run() is None:
        j.create_run(rd.root.name, str(plan.file), {}, 1, 1.0, "test")
        for i, (name, job) in enumerate(plan.jobs.items()):
            j.add_job(name, job.base, job.config.method, list(job.needs), job.config.resources.world_size, i)
    return j


def controller(plan: Plan, rd: RunDir, ex: InMemoryExecutor, cluster: ClusterShape = TWO_NODES) -> Controller:
    books = Books.of((n.node_id, n.gpus, n.gpu_type) for n in cluster.nodes)
    return Controller(plan, rd, open_journal(plan, rd), {}, books, ex, "backfill", clock=ex.clock)


def orders(ex: InMemoryExecutor, kind: type, job: str | None = None) -> list:
    return [o for o in ex.orders if isinstance(o, kind) and (job is None or o.job == job)]  # type: ignore[attr-defined]


def test_a_chain_runs_in_order_and_succeeds(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, """
        a: {}
        b: {needs: [a]}
        c: {needs: [a], resources: {nodes: 1, gpus_per_node: 2}}
    """)
    ex = InMemoryExecutor(Clock())
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded" and ex.closed
    j = c.journal
    assert {r["name"]: r["state"] for r in j.jobs()} == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    started = [o.job for o in ex.orders if isinstance(o, StartOrder)]
    assert started[0] == "a" and set(started[1:]) == {"b", "c"}
    # a succeeded: its release offered the reservation to the next job (keep), with no stacks
    assert [(o.keep, o.dump_stacks) for o in orders(ex, ReleaseOrder, "a")] == [(True, False)]
    assert [a["state"] for a in j.attempts("c")] == ["succeeded"]
    assert j.run()["state"] == "succeeded" and c.core.books.free_gpus() == 4


def test_a_crash_restarts_after_the_back_off_from_the_newest_checkpoint(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    clock = Clock()
    ex = InMemoryExecutor(clock, {"a": [Script(total_steps=10, save_every=3, stop_at=7, exit_code=1,
                                               log=("Traceback", "ValueError: boom")),
                                        Script(total_steps=10)]})
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded"
    j = c.journal
    a1, a2 = j.attempts("a")
    assert (a1["state"], a1["failure"]) == ("failed", "crash") and "ValueError: boom" in a1["detail"]
    assert a2["resumed_from"].endswith("checkpoint-6") and a2["start_step"] == 6
    (t_release, _), (t_reserve, _) = [(t, o) for t, o in zip(ex.times, ex.orders)
                                      if isinstance(o, (ReleaseOrder, ReserveOrder)) and o.attempt >= 1][1:3]
    assert t_reserve - t_release >= 5.0   # retry.backoff, in the controller's clock
    restart = [d for d in j.decisions("a") if d.kind == "restart"]
    assert [(d.data["action"], d.data["delay"], d.data["attempt"]) for d in restart] == [("restart", 5.0, 1)]
    assert restart[0].data["restarts_without_progress"] == 1


def test_an_oom_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {training: {batch_size: 4, grad_accum: 1}}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(stop_at=2, exit_code=1, log=("torch.OutOfMemoryError: CUDA out of memory",)),
                                          Script()]})
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded"
    a1, a2 = c.journal.attempts("a")
    assert a1["failure"] == "oom"
    assert [d.data for d in c.journal.decisions("a") if d.kind == "micro_batch"] == [{"batch_size": 2, "grad_accum": 2}]
    second = orders(ex, StartOrder, "a")[1]
    from launcher.spec import JobFile
    jf = JobFile.model_validate_json(second.job_file.read_text())
    assert (jf.training.batch_size, jf.training.grad_accum) == (2, 2)
    assert '"batch_size": [4, 2]' in a2["changes"]


def test_a_hang_is_found_by_the_step_timeout_and_stacks_are_dumped(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {hang: {step: 30}}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=10, stall_at=4), Script(total_steps=10)]})
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded"
    a1 = c.journal.attempts("a")[0]
    assert a1["failure"] == "hang" and "timeout 30s" in a1["detail"]
    first = orders(ex, ReleaseOrder, "a")[0]
    assert first.dump_stacks and first.grace == 2.0 and not first.keep


def test_a_lost_node_restarts_the_job_elsewhere_and_the_decision_is_journalled(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=20, stall_at=3), Script()]})
    c = controller(plan, rd, ex)
    # The node's host dies mid-run: the executor reports the attempt lost.
    real_wait = ex.wait

    def wait(until: float) -> list:
        evs = real_wait(until)
        sim = ex.sims.get(("a", 1))
        if sim is not None and sim.step >= 3:
            from launcher.control.executor import AttemptFailed
            from launcher.supervision.failure import Verdict
            return [AttemptFailed("a", 1, Verdict.LOST, "node agent lost: RayActorError")]
        return evs
    ex.wait = wait   # type: ignore[method-assign]
    assert c.run() == "succeeded"
    first, second = orders(ex, ReserveOrder, "a")
    assert first.nodes != second.nodes   # the second attempt went to the other node
    d = [d for d in c.journal.decisions("a") if d.kind == "restart"][0]
    assert d.data["action"] == "restart_elsewhere" and d.data["avoid_nodes"] == list(first.nodes)
    assert c.journal.attempts("a")[0]["failure"] == "lost"


def test_giving_up_after_max_restarts_skips_the_dependants(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {retry: {max_restarts: 1, backoff: 0}}\nb: {needs: [a]}\n")
    crash = Script(stop_at=1, exit_code=2, save_every=1)   # progress each time: only max_restarts stops it
    ex = InMemoryExecutor(Clock(), {"a": [crash, crash]})
    c = controller(plan, rd, ex)
    assert c.run() == "failed"
    states = {r["name"]: (r["state"], r["reason"]) for r in c.journal.jobs()}
    assert states["a"][0] == "failed" and "max_restarts" in states["a"][1]
    assert states["b"] == ("skipped", "needs a, which failed")
    assert [d.kind for d in c.journal.decisions("a") if d.kind in ("restart", "give_up")] == ["restart", "give_up"]
    assert not orders(ex, ReserveOrder, "b")


def test_an_exit_code_the_plan_calls_fatal_gives_up_without_a_restart(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {retry: {max_restarts: 3, on_exit_codes: {2: fatal}}}\nb: {needs: [a]}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(stop_at=1, exit_code=2, log=("usage: train.py [-h]",
                                                                             "train.py: error: unrecognized arguments"))]})
    c = controller(plan, rd, ex)
    assert c.run() == "failed"
    (a1,) = c.journal.attempts("a")
    assert a1["failure"] == "fatal" and "unrecognized arguments" in a1["detail"]
    assert [d.kind for d in c.journal.decisions("a") if d.kind in ("restart", "give_up")] == ["give_up"]
    assert len(orders(ex, StartOrder, "a")) == 1
    assert {r["name"]: r["state"] for r in c.journal.jobs()} == {"a": "failed", "b": "skipped"}


def test_a_launcher_line_gets_one_process_per_node_and_a_script_one_per_gpu(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, """
        line: {method: command, params: {argv: [python, -c, pass], launcher: single},
               resources: {nodes: 2, gpus_per_node: 2}}
        ranks: {method: command, params: {argv: [python, -c, pass]}, resources: {nodes: 2, gpus_per_node: 2},
                needs: [line]}
    """)
    ex = InMemoryExecutor(Clock())
    assert controller(plan, rd, ex).run() == "succeeded"
    assert [(o.job, o.ranks_per_node, o.world_size) for o in orders(ex, StartOrder)] == [("line", 1, 2),
                                                                                          ("ranks", 2, 4)]


def test_a_packed_job_that_runs_out_of_memory_gets_a_whole_gpu_and_keeps_it_after_a_resume(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, """
        small: {resources: {gpu_memory: 2GiB}, retry: {max_restarts: 2, backoff: 0}, training: {batch_size: 4}}
        other: {resources: {gpu_memory: 2GiB}}
    """)
    books = Books.of(((n.node_id, n.gpus, n.gpu_type) for n in TWO_NODES.nodes), {"n0": 8192, "n1": 8192})
    oom = Script(stop_at=2, exit_code=1, log=("torch.OutOfMemoryError: CUDA out of memory.",))
    ex = InMemoryExecutor(Clock(), {"small": [oom, Script()]})
    c = Controller(plan, rd, open_journal(plan, rd), {}, books, ex, "backfill", clock=ex.clock)
    assert c.run() == "succeeded"
    first, second = orders(ex, ReserveOrder, "small")
    # 2 GiB of the 7 GiB usable (8 GiB less the 1 GiB headroom), then a whole GPU, the micro-batch kept
    assert (first.shape.mib, first.gpu_fraction, second.shape.mib, second.gpu_fraction) == (2048, 0.2858, 0, 0.0)
    assert [d.kind for d in c.journal.decisions("small") if d.kind in ("exclusive", "micro_batch")] == ["exclusive"]
    (start,) = [o for o in orders(ex, StartOrder, "small")][:1]
    assert start.env["SL_GPU_SHARE_MIB"] == "2048" and start.env["SL_GPU_MEMORY_FRACTION"] == "0.2500"
    assert "SL_GPU_SHARE_MIB" not in orders(ex, StartOrder, "small")[1].env
    placement = json.loads(c.journal.attempts("small")[0]["placement"])
    assert placement[0]["share_mib"] == 2048
    assert c.core.books.free == {"n0": 2, "n1": 2} and not any(c.core.books.shared.values())
    # a resumed run replays the decision: whole GPUs for it, still packed for the other
    c2 = Controller(plan, rd, open_journal(plan, rd), {}, books, InMemoryExecutor(Clock()), "backfill")
    assert c2.core.jobs["small"].shape.mib == 0 and c2.core.jobs["other"].shape.mib == 2048


def test_ranks_that_exit_0_without_a_result_fail_the_job(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(result=None)]})
    c = controller(plan, rd, ex)
    assert c.run() == "failed"
    assert "result.json says 'nothing'" in c.journal.job("a")["reason"]


def test_a_kill_request_stops_one_job_and_the_rest_go_on(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\nb: {}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=50)], "b": [Script(total_steps=5)]})
    c = controller(plan, rd, ex)
    real_wait = ex.wait

    def wait(until: float) -> list:
        evs = real_wait(until)
        if any(isinstance(e, Spawned) and e.job == "a" for e in evs):
            control.request_kill(rd.root, "a", force=False)
        return evs
    ex.wait = wait   # type: ignore[method-assign]
    assert c.run() == "killed"
    assert c.journal.job("a")["state"] == "killed" and c.journal.job("b")["state"] == "succeeded"
    assert c.journal.attempts("a")[0]["state"] == "killed"
    assert [o.grace for o in orders(ex, ReleaseOrder, "a")] == [10.0]


def test_a_kill_while_the_release_is_in_flight_ends_killed_once_it_is_over(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(stop_at=2, exit_code=1)]})
    c = controller(plan, rd, ex)
    ex.hold_releases = True
    real_wait = ex.wait
    asked = []

    def wait(until: float) -> list:
        if ex.held and not asked:   # the failed attempt is being released: bin/kill now
            control.request_kill(rd.root, "a", force=False)
            asked.append(1)
        elif asked:
            ex.let_releases_go()
        return real_wait(until)
    ex.wait = wait   # type: ignore[method-assign]
    assert c.run() == "killed"
    assert c.journal.job("a")["state"] == "killed"
    assert len(orders(ex, ReleaseOrder, "a")) == 1   # the release in flight was not begun twice


def test_a_late_event_of_an_attempt_being_released_is_dropped(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(stop_at=2, exit_code=1), Script()]})
    c = controller(plan, rd, ex)
    real_release = ex.release

    def release(o: ReleaseOrder) -> None:
        real_release(o)
        if o.attempt == 1:   # a report that was on its way when the release began, and a stale spawn
            ex.queue.insert(0, ex._report(ex.sims.get(("a", 1)) or _stale(ex, o)))
            ex.queue.insert(0, Spawned("a", 1, ()))
    ex.release = release   # type: ignore[method-assign]
    assert c.run() == "succeeded"
    assert [a["state"] for a in c.journal.attempts("a")] == ["failed", "succeeded"]


def _stale(ex: InMemoryExecutor, o: ReleaseOrder):   # the attempt's last look, rebuilt for the late report
    from tests.unit.launcher.control.inmemory import _Sim
    start = orders(ex, StartOrder, o.job)[o.attempt - 1]
    return _Sim(start, Script(), 1, exited=1, pids=[1])


def test_a_resumed_run_replays_the_decisions_and_keeps_what_succeeded(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, """
        a: {}
        b: {needs: [a], training: {batch_size: 4}}
    """)
    # First run: a succeeds; b OOMs, is restarted, and the driver dies during its back-off.
    ex = InMemoryExecutor(Clock(), {"b": [Script(stop_at=1, exit_code=1, log=("CUDA out of memory",)), Script()]})
    c = controller(plan, rd, ex)
    real_wait = ex.wait

    def wait(until: float) -> list:
        if any(d.kind == "restart" for d in c.journal.decisions("b")):
            raise KeyboardInterrupt   # the driver process stops here
        return real_wait(until)
    ex.wait = wait   # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        c.run()
    c.journal.close()
    # bin/resume: a new controller on the same journal.
    ex2 = InMemoryExecutor(Clock(2_000.0))
    c2 = controller(plan, rd, ex2)
    assert c2.jobs["b"].job.config.training.batch_size == 2 and c2.jobs["b"].restarts_without_progress == 1
    assert c2.run() == "succeeded"
    assert not orders(ex2, ReserveOrder, "a")   # a stays succeeded
    assert [o.attempt for o in orders(ex2, StartOrder, "b")] == [2]


def test_a_lost_node_is_still_avoided_after_a_resume(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    j = open_journal(plan, rd)
    j.start_attempt("a", 1, [], None, 0, None)
    j.end_attempt("a", 1, "failed", "lost", {}, 0)
    from launcher.journal import Decision
    j.record_decision(Decision("a", "restart", {"attempt": 1, "action": "restart_elsewhere", "delay": 5.0,
                                                "reason": "lost", "avoid_nodes": ["n0"],
                                                "restarts_without_progress": 1}))
    j.close()
    ex = InMemoryExecutor(Clock())
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded"
    assert [o.nodes for o in orders(ex, ReserveOrder, "a")] == [("n1",)]


def test_a_new_checkpoint_after_the_last_decision_resets_the_no_progress_count(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\n")
    j = open_journal(plan, rd)
    from launcher.journal import Decision
    for n in (1, 2):
        j.start_attempt("a", n, [], None, 0, None)
        j.end_attempt("a", n, "failed", "crash", {}, 0)
    j.record_decision(Decision("a", "restart", {"attempt": 1, "action": "restart", "delay": 5.0, "reason": "crash",
                                                "avoid_nodes": [], "restarts_without_progress": 2}))
    j.record_checkpoint("a", 2, 10, str(rd.job("a").checkpoints / "checkpoint-10"), True)
    j.close()
    c = controller(plan, rd, InMemoryExecutor(Clock()))
    assert c.jobs["a"].restarts_without_progress == 0 and c.jobs["a"].attempts == 2


def test_a_node_that_joins_during_the_run_is_offered_to_the_jobs_waiting(tmp_path: Path) -> None:
    one = ClusterShape((NodeShape("n0", 1),))
    plan, rd = make_run(tmp_path, "a: {}\nb: {}\n", cluster=one)
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=10)], "b": [Script(total_steps=10)]})
    ex.changes.append((ex.clock.t + 2, NodesChanged((NodeShape("n1", 1, "H20"),), ())))
    c = controller(plan, rd, ex, cluster=one)
    assert c.run() == "succeeded"
    (ra,), (rb,) = orders(ex, ReserveOrder, "a"), orders(ex, ReserveOrder, "b")
    assert ra.nodes == ("n0",) and rb.nodes == ("n1",)
    release_a = ex.times[ex.orders.index(orders(ex, ReleaseOrder, "a")[0])]
    assert ex.times[ex.orders.index(rb)] < release_a   # b did not wait for a: it ran beside it
    assert c.core.books.free == {"n0": 1, "n1": 1} and c.core.books.type_of["n1"] == "H20"
    assert [e["message"] for e in c.journal.events() if e["kind"] == "cluster"] == ["node n1 joined: 1 GPU(s) H20"]


def test_a_node_that_leaves_is_no_longer_offered(tmp_path: Path) -> None:
    ones = ClusterShape((NodeShape("n0", 1), NodeShape("n1", 1)))
    plan, rd = make_run(tmp_path, "a: {}\nb: {}\nc: {needs: [a, b]}\n", cluster=ones)
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=3)], "b": [Script(total_steps=3)]})
    ex.changes.append((ex.clock.t, NodesChanged((), (NodeShape("n1", 1),))))
    c = controller(plan, rd, ex, cluster=ones)
    assert c.run() == "succeeded"
    assert {orders(ex, ReserveOrder, j)[0].nodes for j in "ab"} == {("n0",), ("n1",)}   # both placed first
    assert orders(ex, ReserveOrder, "c")[0].nodes == ("n0",)
    assert c.core.books.free == {"n0": 1, "n1": 0} and c.core.books.capacity() == 1
    assert any(e["message"].startswith("node n1 left") for e in c.journal.events())


def test_a_job_that_no_longer_fits_waits_for_nodes_and_says_so(tmp_path: Path) -> None:
    plan, rd = make_run(tmp_path, "a: {}\nwide: {needs: [a], resources: {nodes: 2, gpus_per_node: 1}}\n")
    ex = InMemoryExecutor(Clock(), {"a": [Script(total_steps=2)]})
    t0 = ex.clock.t
    ex.changes += [(t0, NodesChanged((), (NodeShape("n1", 2),))), (t0 + 60, NodesChanged((NodeShape("n2", 1),), ()))]
    c = controller(plan, rd, ex)
    assert c.run() == "succeeded"
    (w,) = orders(ex, ReserveOrder, "wide")
    assert sorted(w.nodes) == ["n0", "n2"] and ex.times[ex.orders.index(w)] >= t0 + 60
    assert any("does not fit the cluster as it is now" in e["message"] for e in c.journal.events("wide"))
