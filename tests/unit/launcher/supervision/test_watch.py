"""Attempt watching stepped one report at a time with made-up rank reports and explicit times."""

from __future__ import annotations

from launcher.heartbeat import Heartbeat
from launcher.node.messages import RankStatus
from launcher.spec import HangSpec
from launcher.supervision.watch import AttemptWatch

T0 = 1000.0


def rank(r: int, step: int | None = None, phase: str = "training", exit_code: int | None = None,
         log: list[str] | None = None, total: int = 100, loss: float | None = None, progress: int = 0,
         oom_killed: str | None = None) -> RankStatus:
    hb = None if step is None else Heartbeat(rank=r, step=step, total_steps=total, phase=phase, time=0.0,
                                             pid=4000 + r, loss=loss, progress=progress)
    return RankStatus(rank=r, pid=4000 + r, create_time=1.0, exit_code=exit_code, heartbeat=hb,
                      log_tail=log or [], oom_killed=oom_killed)


def watch(**hang) -> AttemptWatch:
    return AttemptWatch(HangSpec(**hang), started=T0)


# --------------------------------------------------------------------------- exits

def test_crash_detail_has_exit_code_and_log_tail():
    w = watch()
    obs = w.observe([rank(0, 5), rank(1, 5)], now=T0 + 1)
    assert obs.verdict == "running"
    tail = [f"line {i}" for i in range(10)] + ["ValueError: bad shape"]
    obs = w.observe([rank(0, 6, exit_code=None), rank(1, 6, exit_code=3, log=tail)], now=T0 + 2)
    assert obs.verdict == "crash"
    assert obs.detail == "rank 1 exited with 3: line 6 | line 7 | line 8 | line 9 | ValueError: bad shape"
    assert obs.exit_codes == {0: None, 1: 3}


def test_signal_death_is_a_crash_that_names_the_signal():
    obs = watch().observe([rank(0, 1, exit_code=-9, log=[])], now=T0 + 1)
    assert (obs.verdict, obs.detail) == ("crash", "rank 0 exited with -9 (killed by SIGKILL): ")
    # a wrapper or shell passes a signal death on as 128 + n
    obs = watch().observe([rank(0, 1, exit_code=137, log=["x"])], now=T0 + 1)
    assert (obs.verdict, obs.detail) == ("crash", "rank 0 exited with 137 (killed by SIGKILL): x")
    assert watch().observe([rank(0, 1, exit_code=3)], now=T0 + 1).detail == "rank 0 exited with 3: "


def test_the_first_rank_to_die_is_the_crash_not_the_peer_that_lost_it():
    gloo = ["RuntimeError: [gloo/transport/tcp/pair.cc:534] Connection closed by peer"]
    killed = RankStatus(rank=1, pid=4001, create_time=1.0, exit_code=137, heartbeat=None, log_tail=[], exited_at=T0 + 0.5)
    peer = RankStatus(rank=0, pid=4000, create_time=1.0, exit_code=1, heartbeat=None, log_tail=gloo, exited_at=T0 + 0.9)
    obs = watch().observe([peer, killed], now=T0 + 1)
    assert (obs.verdict, obs.detail) == ("crash", "rank 1 exited with 137 (killed by SIGKILL): ")


def test_the_plans_exit_codes_say_what_a_failure_is_before_the_log_does():
    w = AttemptWatch(HangSpec(), started=T0, exit_classes={2: "fatal", 75: "lost", 3: "oom"})
    assert w.observe([rank(0, 1, exit_code=2, log=["usage: train.py [-h]"])], now=T0 + 1).verdict == "fatal"
    # mapped beats the OOM text of another rank: the plan knows what 75 means
    oom = ["CUDA out of memory"]
    assert w.observe([rank(0, 1, exit_code=1, log=oom), rank(1, 1, exit_code=75)], now=T0 + 1).verdict == "lost"
    assert w.observe([rank(0, 1, exit_code=3)], now=T0 + 1).verdict == "oom"
    assert w.observe([rank(0, 1, exit_code=4, log=oom)], now=T0 + 1).verdict == "oom"   # unmapped: as before
    # the kernel's OOM killer is the kernel's word, whatever the code
    assert w.observe([rank(0, 1, exit_code=2, oom_killed="memory cgroup OOM kill")], now=T0 + 1).verdict == "oom"


def test_oom_from_log_tail():
    log = ["step 3", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "exiting"]
    obs = watch().observe([rank(0, 3, exit_code=1, log=log), rank(1, 3)], now=T0 + 1)
    assert obs.verdict == "oom"
    assert obs.detail.startswith("rank 0 exited with 1: step 3 | torch.OutOfMemoryError: CUDA out of memory")


def test_oom_text_further_up_the_tail_still_counts():
    log = ["RuntimeError: CUDA out of memory."] + [f"traceback {i}" for i in range(30)]
    assert watch().observe([rank(0, 3, exit_code=1, log=log)], now=T0 + 1).verdict == "oom"


def test_done_when_all_exit_zero():
    w = watch()
    assert w.observe([rank(0, 99), rank(1, 100, exit_code=0)], now=T0 + 1).verdict == "running"
    obs = w.observe([rank(0, 100, phase="done", exit_code=0, loss=0.1), rank(1, 100, phase="done", exit_code=0)],
                    now=T0 + 2)
    assert (obs.verdict, obs.step, obs.total_steps, obs.loss) == ("done", 100, 100, 0.1)


# --------------------------------------------------------------------------- hangs

def test_hang_after_startup_timeout_without_heartbeat():
    w = watch(startup=60, step=10)
    assert w.observe([rank(0), rank(1)], now=T0 + 59).verdict == "running"
    obs = w.observe([rank(0), rank(1)], now=T0 + 61)
    assert obs.verdict == "hang"
    assert obs.detail == "no progress for 61s in phase start-up (timeout 60s) at step 0"


def test_startup_timeout_applies_while_loading_and_until_every_rank_beats():
    w = watch(startup=60, step=5)
    # the start-up clock runs from the attempt's start; a first heartbeat at step 0 does not reset it
    assert w.observe([rank(0, 0, phase="loading"), rank(1)], now=T0 + 30).verdict == "running"
    # rank 0 has reached training but rank 1 has no heartbeat yet: still start-up, not the 5 s step timeout
    assert w.observe([rank(0, 3), rank(1)], now=T0 + 50).verdict == "running"
    assert w.observe([rank(0, 3), rank(1)], now=T0 + 60).verdict == "running"
    obs = w.observe([rank(0, 3), rank(1)], now=T0 + 61)
    assert obs.verdict == "hang"
    assert obs.detail == "no progress for 61s in phase start-up (timeout 60s) at step 0"
    # all ranks loading: start-up allowance too
    w = watch(startup=60, step=5)
    w.observe([rank(0, 0, phase="loading"), rank(1, 0, phase="loading")], now=T0 + 1)
    assert w.observe([rank(0, 0, phase="loading"), rank(1, 0, phase="loading")], now=T0 + 60).verdict == "running"
    assert w.observe([rank(0, 0, phase="loading"), rank(1, 0, phase="loading")], now=T0 + 62).verdict == "hang"


def test_hang_when_step_stops_advancing_fixed_timeout():
    w = watch(startup=600, step=10)
    for t, s in [(5, 0), (6, 1), (7, 2), (8, 3)]:
        assert w.observe([rank(0, s), rank(1, s)], now=T0 + t).verdict == "running"
    assert w.observe([rank(0, 3), rank(1, 3)], now=T0 + 18).verdict == "running"
    obs = w.observe([rank(0, 3), rank(1, 3)], now=T0 + 18.5)
    assert obs.verdict == "hang"
    assert obs.detail == "no progress for 10s in phase training (timeout 10s) at step 3"


def test_one_stuck_rank_stalls_progress():
    """Progress is the slowest rank's step: rank 0 racing ahead does not hide rank 1 stuck."""
    w = watch(startup=600, step=10)
    w.observe([rank(0, 1), rank(1, 1)], now=T0 + 1)
    for t in range(2, 12):
        assert w.observe([rank(0, t), rank(1, 1)], now=T0 + t).verdict == "running"
    obs = w.observe([rank(0, 12), rank(1, 1)], now=T0 + 12)
    assert obs.verdict == "hang" and obs.detail == "no progress for 11s in phase training (timeout 10s) at step 1"
    assert obs.step == 12          # reported step is rank 0's


def test_auto_step_timeout_learned_after_warmup():
    w = watch(startup=100, step="auto", factor=5, min_step=1, warmup_steps=2)
    reports = [(1, 0), (2, 1), (3, 2), (4, 3), (6, 4)]   # step time 1s, then one 2s step
    for t, s in reports:
        assert w.observe([rank(0, s)], now=T0 + t).verdict == "running"
        if s < 3:
            assert w.step_timeout() is None        # still warming up: start-up allowance applies
    assert w.slowest["training"] == 2.0
    assert w.step_timeout() == 10.0               # max(min_step 1, 5 x 2s)
    assert w.learned == {"training": 10.0}
    assert w.observe([rank(0, 4)], now=T0 + 16).verdict == "running"
    obs = w.observe([rank(0, 4)], now=T0 + 16.5)
    assert obs.verdict == "hang"
    assert obs.detail == "no progress for 10s in phase training (timeout 10s) at step 4"


def test_auto_before_learning_uses_startup_allowance():
    w = watch(startup=100, step="auto", factor=5, min_step=1, warmup_steps=3)
    w.observe([rank(0, 0)], now=T0 + 1)
    w.observe([rank(0, 1)], now=T0 + 2)
    assert w.observe([rank(0, 1)], now=T0 + 101).verdict == "running"
    assert w.observe([rank(0, 1)], now=T0 + 102.5).verdict == "hang"


def test_auto_step_timeout_never_below_min_step():
    w = watch(startup=100, step="auto", factor=5, min_step=30, warmup_steps=0)
    for i in range(5):
        w.observe([rank(0, i)], now=T0 + 1 + 0.1 * i)
    assert w.step_timeout() == 30.0


def test_auto_step_timeout_carries_over_and_never_shrinks():
    w = AttemptWatch(HangSpec(step="auto", factor=5, min_step=1, warmup_steps=0), started=T0,
                     learned={"training": 50.0})
    assert w.step_timeout() == 50.0
    w.observe([rank(0, 0)], now=T0 + 1)
    w.observe([rank(0, 1)], now=T0 + 2)           # 1 s step: 5 s would be learned, 50 s is kept
    assert w.step_timeout() == 50.0
    assert w.observe([rank(0, 1)], now=T0 + 40).verdict == "running"


def test_saving_phase_uses_save_timeout_from_the_start_of_the_save():
    w = watch(startup=600, step=10, save=100)
    w.observe([rank(0, 0), rank(1, 0)], now=T0 + 1)
    w.observe([rank(0, 5), rank(1, 5)], now=T0 + 10)
    # rank 1 waits at the barrier in `training` while rank 0 saves: the save timeout covers both
    assert w.observe([rank(0, 5, phase="saving"), rank(1, 5)], now=T0 + 12).verdict == "running"
    assert w.observe([rank(0, 5, phase="saving"), rank(1, 5)], now=T0 + 111).verdict == "running"
    obs = w.observe([rank(0, 5, phase="saving"), rank(1, 5, phase="saving")], now=T0 + 113)
    assert obs.verdict == "hang"
    assert obs.detail == "no progress for 101s in phase saving (timeout 100s) at step 5"


def test_evaluating_phase_uses_eval_timeout():
    w = watch(startup=600, step=10, eval=200)
    w.observe([rank(0, 0)], now=T0 + 1)
    w.observe([rank(0, 5)], now=T0 + 10)
    w.observe([rank(0, 5, phase="evaluating")], now=T0 + 11)
    assert w.observe([rank(0, 5, phase="evaluating")], now=T0 + 211).verdict == "running"
    assert w.observe([rank(0, 5, phase="evaluating")], now=T0 + 212).detail.startswith("no progress for 201s in phase evaluating")


def test_evaluation_then_save_are_not_charged_to_the_step_timeout():
    """Issue 11: at step 50, 30 s of evaluation then 15 s of saving, then training at the same step,
    under step 10: each phase is timed from its own start, so the return to training is not a hang."""
    w = watch(startup=600, step=10, eval=60, save=60)
    for t in range(1, 51):
        assert w.observe([rank(0, t), rank(1, t)], now=T0 + t).verdict == "running"
    t = T0 + 50
    for dt in range(1, 31):
        assert w.observe([rank(0, 50, "evaluating"), rank(1, 50, "evaluating")], now=t + dt).verdict == "running"
    for dt in range(31, 46):
        assert w.observe([rank(0, 50, "saving"), rank(1, 50, "saving")], now=t + dt).verdict == "running"
    assert w.observe([rank(0, 50), rank(1, 50)], now=t + 46).verdict == "running"
    assert w.observe([rank(0, 50), rank(1, 50)], now=t + 55).verdict == "running"
    assert w.observe([rank(0, 51), rank(1, 51)], now=t + 56).verdict == "running"
    # a real stall back in training is still caught by the step timeout, from the last step
    assert w.observe([rank(0, 51), rank(1, 51)], now=t + 66.5).detail == \
        "no progress for 10s in phase training (timeout 10s) at step 51"


def test_a_long_evaluation_is_watched_by_its_own_batches():
    """40 minutes of evaluation under a 10-minute eval timeout: each batch is progress, a stall is not."""
    w = watch(startup=60, step=10, eval=600)
    w.observe([rank(0, 0, "loading")], now=T0 + 1)
    for b in range(1, 41):   # one batch a minute, at step 0 (an evaluation-only job): start-up does not apply
        hb = rank(0, 0, "evaluating", progress=b)
        assert w.observe([hb], now=T0 + 60 * b).verdict == "running"
    assert w.observe([hb], now=T0 + 2400 + 600).verdict == "running"
    obs = w.observe([hb], now=T0 + 2400 + 601)
    assert obs.detail == "no progress for 601s in phase evaluating (timeout 600s) at step 0"


def test_units_of_the_slowest_rank_count():
    w = watch(startup=60, step=10, eval=100)
    r0, r1 = rank(0, 3, "evaluating"), rank(1, 3, "evaluating")
    w.observe([rank(0, 3), rank(1, 3)], now=T0 + 1)
    w.observe([r0, r1], now=T0 + 2)
    for b in range(1, 20):   # rank 0 keeps evaluating, rank 1 is stuck on its first batch
        r0 = rank(0, 3, "evaluating", progress=b)
        obs = w.observe([r0, r1], now=T0 + 2 + 10 * b)
    assert obs.verdict == "hang" and "in phase evaluating" in obs.detail


def test_step_time_learning_ignores_evaluation_and_saving():
    w = watch(startup=100, step="auto", factor=5, min_step=1, warmup_steps=0)
    for t in range(1, 6):
        w.observe([rank(0, t - 1)], now=T0 + t)
    w.observe([rank(0, 4, "evaluating")], now=T0 + 5.5)
    w.observe([rank(0, 4, "saving")], now=T0 + 40)
    w.observe([rank(0, 4)], now=T0 + 60)
    w.observe([rank(0, 5)], now=T0 + 61)
    assert w.slowest["training"] == 1.0 and w.step_timeout() == 5.0


def test_oom_on_any_rank_beats_the_broken_collective_of_another():
    """Rank 1 runs out of memory; rank 0 fails first with a broken collective: the attempt is an OOM."""
    gloo = ["RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"]
    oom = ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "exiting"]
    obs = watch().observe([rank(0, 3, exit_code=1, log=gloo), rank(1, 3, exit_code=1, log=oom)], now=T0 + 1)
    assert obs.verdict == "oom" and obs.detail.startswith("rank 1 exited with 1: torch.OutOfMemoryError")


def test_observation_carries_rank0_progress():
    obs = watch().observe([rank(1, 7, total=50), rank(0, 9, total=50, loss=0.25)], now=T0 + 1)
    assert (obs.verdict, obs.step, obs.total_steps, obs.loss) == ("running", 9, 50, 0.25)


def test_a_rank_still_training_while_another_is_done_is_watched_by_the_step_timeout():
    w = watch(startup=60, step=3, save=1800)
    w.observe([rank(0, 12), rank(1, 12)], now=T0 + 1)
    w.observe([rank(0, 40, "done"), rank(1, 12)], now=T0 + 2)   # rank 1 stopped at step 12
    obs = w.observe([rank(0, 40, "done"), rank(1, 12)], now=T0 + 5.5)
    assert obs.detail == "no progress for 4s in phase training (timeout 3s) at step 12"


# --------------------------------------------------------------------------- auto per phase

def test_auto_eval_timeout_is_learned_from_the_slowest_batch_and_watches_the_next_evaluation():
    w = watch(startup=100, step=50, eval="auto", factor=5, min_step=1)
    w.observe([rank(0, 1)], now=T0 + 1)
    for b, (t, learned) in enumerate([(2, None), (4, 10.0), (7, 15.0), (9, 15.0)]):   # batches 2, 3, 2 s apart
        assert w.observe([rank(0, 1, "evaluating", progress=b)], now=T0 + t).verdict == "running"
        assert w.timeout("evaluating") == learned
    assert w.learned == {"evaluating": 15.0}        # 5 x the slowest batch (3 s)
    w.observe([rank(0, 1)], now=T0 + 10)
    w.observe([rank(0, 2)], now=T0 + 11)
    w.observe([rank(0, 2, "evaluating", progress=0)], now=T0 + 12)
    assert w.observe([rank(0, 2, "evaluating", progress=0)], now=T0 + 26).verdict == "running"
    obs = w.observe([rank(0, 2, "evaluating", progress=0)], now=T0 + 27.5)
    assert obs.verdict == "hang" and "in phase evaluating (timeout 15s)" in obs.detail


def test_auto_eval_before_any_batch_uses_the_startup_allowance():
    w = watch(startup=100, step=50, eval="auto", factor=5, min_step=1)
    w.observe([rank(0, 1)], now=T0 + 1)
    w.observe([rank(0, 1, "evaluating")], now=T0 + 2)
    assert w.observe([rank(0, 1, "evaluating")], now=T0 + 101).verdict == "running"
    assert w.observe([rank(0, 1, "evaluating")], now=T0 + 103).verdict == "hang"


def test_auto_save_timeout_is_learned_from_whole_saves():
    w = watch(startup=100, step=50, save="auto", factor=2, min_step=1)
    w.observe([rank(0, 1)], now=T0 + 1)
    w.observe([rank(0, 1, "saving")], now=T0 + 2)
    w.observe([rank(0, 1)], now=T0 + 32)            # a 30 s save
    assert w.timeout("saving") == 60.0
    w.observe([rank(0, 2)], now=T0 + 33)
    w.observe([rank(0, 2, "saving")], now=T0 + 34)
    assert w.observe([rank(0, 2, "saving")], now=T0 + 93).verdict == "running"
    assert w.observe([rank(0, 2, "saving")], now=T0 + 95).verdict == "hang"


def test_learned_phase_timeouts_carry_over_per_phase():
    w = AttemptWatch(HangSpec(step="auto", eval="auto", save="auto"), started=T0,
                     learned={"training": 70.0, "saving": 300.0})
    assert (w.timeout("training"), w.timeout("evaluating"), w.timeout("saving")) == (70.0, None, 300.0)


def test_a_fixed_phase_timeout_is_never_learned():
    w = watch(startup=100, step=5, eval=40, save=30, factor=5, min_step=1, warmup_steps=0)
    for t in range(1, 6):
        w.observe([rank(0, t)], now=T0 + t)
    w.observe([rank(0, 5, "evaluating", progress=0)], now=T0 + 6)
    w.observe([rank(0, 5, "evaluating", progress=1)], now=T0 + 16)
    assert w.learned == {} and w.timeout("evaluating") == 40.0


# --------------------------------------------------------------------------- kernel OOM, checkpoints

def test_a_kernel_oom_kill_with_no_log_line_is_an_oom():
    w = watch()
    w.observe([rank(0, 5), rank(1, 5)], now=T0 + 1)
    why = "killed by the kernel's OOM killer (host memory): oom_kill went 0 -> 1 in its memory cgroup (/sys/x)"
    obs = w.observe([rank(0, 5, exit_code=-6, log=["gloo: connection reset"]), rank(1, 5, exit_code=-9, oom_killed=why)],
                    now=T0 + 2)
    assert obs.verdict == "oom" and obs.detail == f"rank 1 exited with -9: {why}"


def test_a_sigkill_without_the_oom_counter_moving_is_a_crash():
    w = watch()
    w.observe([rank(0, 5)], now=T0 + 1)
    assert w.observe([rank(0, 5, exit_code=-9)], now=T0 + 2).verdict == "crash"


# --------------------------------------------------------------------------- command jobs

def script(r: int, ticks: int, signals: dict[str, float]) -> RankStatus:
    hb = Heartbeat(rank=r, step=1, total_steps=0, phase="training", time=0.0, pid=4000 + r, progress=ticks,
                   signals=signals)
    return RankStatus(rank=r, pid=4000 + r, create_time=1.0, exit_code=None, heartbeat=hb)


def test_a_silent_script_that_keeps_working_is_never_a_hang_and_a_flat_one_is():
    """The command wrapper's activity ticks are progress: only when every signal stays flat does
    the step timeout run out, and the verdict says which rank's signals were idle how long."""
    w = watch(step=30)
    for t in range(0, 600, 10):   # ten minutes, not a line of output, but CPU and files moving
        assert w.observe([script(0, t, {"output": float(t)}), script(1, t, {"output": float(t)})],
                         now=T0 + t).verdict == "running"
    flat = {"output": 700.0, "files": 40.0, "cpu": 40.0}
    obs = w.observe([script(0, 590, flat), script(1, 600, flat)], now=T0 + 631)
    assert obs.verdict == "hang"
    assert obs.detail.endswith("rank 0's signals idle: output 700s, files 40s, cpu 40s")


def test_a_rank_that_prints_no_steps_does_not_hold_the_jobs_step_down():
    """A Trainer script's rank 1 prints no bar: its wrapper beats step 1 with counts_steps False."""
    w = AttemptWatch(HangSpec(step="auto", factor=5, min_step=1, warmup_steps=0), started=T0)
    silent = rank(1, 1)
    silent.heartbeat.counts_steps = False
    for i, t in enumerate(range(1, 6), start=1):
        obs = w.observe([rank(0, 10 * i), silent], now=T0 + t)
    assert obs.step == 50 and w.last_step == 50
    assert w.step_timeout() == 1.0   # learned from rank 0's steps (0.1 s a step x 5, at least min_step); None if not
