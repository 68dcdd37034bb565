"""GPUs are reused only once the job's processes are gone from them and memory is back near baseline."""

from __future__ import annotations

from launcher.memprobe import NvmlProbe
from launcher.release import baseline, margin_mib, wait_released
from tests.unit.launcher.test_monitor import fake_pynvml


def _clock():
    t = [0.0]
    return (lambda: t[0]), (lambda dt: t.__setitem__(0, t[0] + dt))


def test_waits_for_the_job_process_to_leave_and_memory_to_return() -> None:
    g = {"GPU-bbbb-1111": {"mem": (1000, 40960), "util": 0, "procs": []}}
    script = [
        {"0": {"mem": (1000, 81920), "util": 0, "procs": []}, **g},                      # baseline
        {"0": {"mem": (30000, 81920), "util": 0, "procs": [(101, 29000)]}, **g},         # rank still there
        {"0": {"mem": (9000, 81920), "util": 0, "procs": []}, **g},                      # gone, memory not back
        {"0": {"mem": (1200, 81920), "util": 0, "procs": []}, **g},                      # back within margin
    ]
    probe = NvmlProbe(["0", "GPU-bbbb-1111"], fake_pynvml(script))
    base = baseline(probe, ["0", "GPU-bbbb-1111"])
    assert base == {"0": 1000.0, "GPU-bbbb-1111": 1000.0}
    clock, sleep = _clock()
    r = wait_released(probe, ["0", "GPU-bbbb-1111"], [101], base, timeout=10, interval=0.5, clock=clock, sleep=sleep)
    assert r.released and r.backend == "nvml" and r.waited_s == 1.0


def test_memory_that_never_comes_back_is_reported_not_reused() -> None:
    leak = {"0": {"mem": (20000, 81920), "util": 0, "procs": [(101, 19000)]},
            "GPU-bbbb-1111": {"mem": (1000, 40960), "util": 0, "procs": []}}
    probe = NvmlProbe(["0", "GPU-bbbb-1111"], fake_pynvml([leak]))
    clock, sleep = _clock()
    r = wait_released(probe, ["0", "GPU-bbbb-1111"], [101], {"0": 1000.0, "GPU-bbbb-1111": 1000.0}, timeout=3,
                      interval=1, clock=clock, sleep=sleep)
    assert not r.released and r.still_held == {"0": 19000.0} and r.job_pids_on_gpu == [101] and r.waited_s == 3


def test_margin_is_512_mib_or_two_percent() -> None:
    assert margin_mib(None) == 512 and margin_mib(81920) == 0.02 * 81920


def test_an_exited_but_unreaped_process_holds_nothing() -> None:
    """A zombie (exited, its parent not yet waiting on it) has no memory: on the host backend it must
    not keep the GPU from being released (init in some containers never reaps)."""
    import os
    import time

    import psutil

    from launcher.memprobe import HostProbe
    from launcher.procs import start_time

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        deadline = time.time() + 5
        while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
            time.sleep(0.01)
        ref = (pid, start_time(psutil.Process(pid)))
        r = wait_released(HostProbe(), ["0"], [ref], {"0": None}, timeout=0.5, interval=0.1)
        assert r.released, r
    finally:
        os.waitpid(pid, 0)


def test_a_shared_gpu_is_released_once_the_jobs_own_processes_are_gone_whatever_the_neighbours_hold() -> None:
    """A packed job's neighbour (pid 555) grows while it stops: not this job's memory, no quarantine."""
    script = [
        {"0": {"mem": (9000, 81920), "util": 0, "procs": [(101, 4000), (555, 4000)]}},    # baseline: both tenants
        {"0": {"mem": (13000, 81920), "util": 0, "procs": [(101, 4000), (555, 8000)]}},   # ours still there
        {"0": {"mem": (9000, 81920), "util": 0, "procs": [(555, 8000)]}},                 # ours gone; 555 grew
    ]
    probe = NvmlProbe(["0"], fake_pynvml(script))
    base = baseline(probe, ["0"])
    clock, sleep = _clock()
    r = wait_released(probe, ["0"], [101], base, timeout=10, interval=0.5, clock=clock, sleep=sleep, shared=True)
    assert r.released and r.waited_s == 0.5
    # judged by the device total, the same GPU would never have counted as back
    probe = NvmlProbe(["0"], fake_pynvml(script))
    base = baseline(probe, ["0"])
    clock, sleep = _clock()
    assert not wait_released(probe, ["0"], [101], {"0": 1000.0}, timeout=3, interval=1, clock=clock, sleep=sleep).released
