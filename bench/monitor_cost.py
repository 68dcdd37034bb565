"""CPU cost of one monitor sample, and the share of one core it takes at the default interval.

    PYTHONPATH=. .venv/bin/python bench/monitor_cost.py [--samples 1000]

Host backend on real processes (1 and 8 "ranks" with heartbeats, as a node agent sees them),
timed with time.process_time over N synchronous samples: the work the sampler thread does per
tick (process list, RSS per process, heartbeat stat, one CSV append, peak update). The NVML
backend's own cost cannot be measured on a machine without a driver; the pynvml stub of the
unit tests gives the launcher-side part of it, printed for comparison.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from launcher import heartbeat, monitor
from launcher.layout import JobDir


def per_sample(s: monitor.Sampler, n: int) -> tuple[float, float]:
    s.sample_once()   # warm caches (psutil objects, environ) as the live thread would have them
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        s.sample_once()
    return (time.process_time() - c0) / n, (time.perf_counter() - w0) / n


def host_case(ranks: int, n: int, tmp: Path) -> tuple[float, float]:
    gpus = [str(i) for i in range(ranks)]
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={"CUDA_VISIBLE_DEVICES": ",".join(gpus), "LOCAL_RANK": str(i), "PATH": "/usr/bin:/bin"})
             for i in range(ranks)]
    try:
        refs = [(p.pid, psutil.Process(p.pid).create_time()) for p in procs]
        jd = JobDir(tmp / f"host-{ranks}")
        for r in range(ranks):
            heartbeat.write(jd.heartbeat(r), heartbeat.Heartbeat(rank=r, step=1, total_steps=10, phase="training"))
        s = monitor.Sampler(jd.root, "node", gpus, lambda: refs, backend="host", ranks=list(range(ranks)),
                            metrics=False)
        out = per_sample(s, n)
        s.stop()
        return out
    finally:
        for p in procs:
            p.kill()
            p.wait()


def nvml_stub_case(n: int, tmp: Path) -> tuple[float, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.unit.launcher.test_monitor import SCRIPT, fake_pynvml
    s = monitor.Sampler(tmp / "nvml", "node", ["0", "GPU-bbbb-1111"], lambda: [101, 102, 201, 202], backend="nvml",
                        ranks=[0, 1], metrics=False, nvml=fake_pynvml(SCRIPT))
    out = per_sample(s, n)
    s.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=1000)
    n = p.parse_args().samples
    with tempfile.TemporaryDirectory() as tmp:
        print(f"monitor cost per sample over {n} samples (interval {monitor.DEFAULT_INTERVAL} s):")
        for ranks in (1, 8):
            cpu, wall = host_case(ranks, n, Path(tmp))
            print(f"  host backend, {ranks} rank process(es): CPU {1e3 * cpu:.3f} ms, wall {1e3 * wall:.3f} ms"
                  f"  -> {100 * cpu / monitor.DEFAULT_INTERVAL:.3f} % of one core")
        cpu, wall = nvml_stub_case(n, Path(tmp))
        print(f"  nvml path on the pynvml stub, 2 GPUs (launcher side only): CPU {1e3 * cpu:.3f} ms, "
              f"wall {1e3 * wall:.3f} ms")


if __name__ == "__main__":
    main()
