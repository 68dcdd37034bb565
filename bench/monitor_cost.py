"""CPU cost of one monitor sample, and the share of one core it takes at the default interval.

    PYTHONPATH=. .venv/bin/python bench/monitor_cost.py [--samples 1000]
    (also the `monitor` piece of `python -m bench`, with the peak-capture error)

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
from typing import TYPE_CHECKING

import psutil

from launcher import heartbeat, monitor
from launcher.layout import JobDir
from launcher.procs import start_time

if TYPE_CHECKING:
    from bench.results import PieceResult


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
        refs = [(p.pid, start_time(psutil.Process(p.pid))) for p in procs]
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


BUFFER_MIB = 300
# Also the child of tests/integration/launcher/test_monitor_host.py: waits for a line, allocates BUFFER_MIB and
# touches every page (resident, not just reserved), holds it 1.5 s, frees it, waits again.
CHILD = f"""
import sys, time
print("ready", flush=True)
sys.stdin.readline()
n = {BUFFER_MIB} * 2**20
buf = bytearray(n)
for i in range(0, n, 4096):
    buf[i] = 1
print("allocated", flush=True)
time.sleep(1.5)
del buf
print("freed", flush=True)
sys.stdin.readline()
"""


def spike(root: Path) -> tuple[float, monitor.PeakRow, float]:
    """A host sampler at its default interval, writing under root, against a child that allocates
    BUFFER_MIB and frees it. Returns the child's RSS before (MiB), the sampler's peak, RSS after."""
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        p = psutil.Process(child.pid)
        time.sleep(0.2)
        baseline = p.memory_info().rss / 2**20
        s = monitor.Sampler(root, "node", ["0"], lambda: [(child.pid, start_time(p))], backend="host",
                            metrics=False).start()
        time.sleep(0.6)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "allocated"
        assert child.stdout.readline().strip() == "freed"
        time.sleep(1.1)
        after = p.memory_info().rss / 2**20
        (peak,) = s.stop()
        child.stdin.write("end\n")
        child.stdin.flush()
        child.wait(timeout=10)
    finally:
        child.kill()
        child.wait()
    return baseline, peak, after


def peak_capture(tmp: Path) -> dict[str, float]:
    """The host sampler at its default interval against a child that allocates a known buffer."""
    baseline, peak, _ = spike(tmp / "peak")
    measured = peak.peak_mib - baseline
    return {"buffer_mib": BUFFER_MIB, "baseline_mib": baseline, "peak_mib": peak.peak_mib, "measured_mib": measured,
            "error": (measured - BUFFER_MIB) / BUFFER_MIB, "samples": peak.samples}


def bench(quick: bool) -> PieceResult:
    from bench.results import PieceResult, Row

    n = 200 if quick else 1000
    rows, details = [], {"samples": n, "interval_s": monitor.DEFAULT_INTERVAL}
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in (1, 8):
            cpu, wall = host_case(ranks, n, Path(tmp))
            details[f"host_{ranks}"] = {"cpu_s": cpu, "wall_s": wall}
            rows.append(Row(f"CPU per sample, host backend, {ranks} rank(s)", f"{1e3 * cpu:.3f} ms", cpu,
                            note=f"wall {1e3 * wall:.3f} ms; {100 * cpu / monitor.DEFAULT_INTERVAL:.3f} % of one core "
                                 f"at the {monitor.DEFAULT_INTERVAL} s interval; {n} samples"))
        cpu, wall = nvml_stub_case(n, Path(tmp))
        details["nvml_stub_2gpu"] = {"cpu_s": cpu, "wall_s": wall}
        rows.append(Row("CPU per sample, NVML path on the pynvml stub, 2 GPUs", f"{1e3 * cpu:.3f} ms", cpu,
                        note="launcher side only: no NVML driver on this machine"))
        pk = peak_capture(Path(tmp))
    details["peak_capture"] = pk
    rows.append(Row(f"peak-capture error, {BUFFER_MIB} MiB buffer held 1.5 s", f"{100 * pk['error']:+.2f} %", pk["error"],
                    baseline=f"{BUFFER_MIB} MiB", target="|error| <= 5 % (the integration test's bound)",
                    met=abs(pk["error"]) <= 0.05,
                    note=f"host backend at its default interval: {pk['measured_mib']:.1f} MiB above a "
                         f"{pk['baseline_mib']:.1f} MiB baseline, {pk['samples']} samples"))
    return PieceResult("monitor", rows, details)


def main() -> int:
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
