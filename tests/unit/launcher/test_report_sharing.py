"""bin/report's shared-GPU table from made-up attempts."""

from __future__ import annotations

import json

from launcher.report_sharing import Tenancy, held_per_second, most_at_once, rows, shared_gpus


def att(n: int, start: float, end: float | None, gpu: str, share: int | None) -> dict:
    p = {"node": "abcdef0123", "host": "h1", "gpus": [gpu]}
    if share:
        p["share_mib"] = share
    return {"n": n, "started": start, "ended": end, "placement": json.dumps([p])}


def test_who_shared_which_gpu_and_the_most_at_once() -> None:
    attempts = {"a": [att(1, 10, 40, "0", 800)], "b": [att(1, 12, 30, "0", 1200)],
                "c": [att(1, 30, 50, "0", 800), att(2, 55, None, "1", 800)], "whole": [att(1, 0, 60, "1", None)]}
    got = shared_gpus(attempts)
    assert list(got) == [("h1", "0"), ("h1", "1")] and [t.job for t in got[("h1", "0")]] == ["a", "b", "c"]
    # b ends at 30 as c starts: never three at once
    assert most_at_once(got[("h1", "0")], now=100) == (2, 2000)
    table = rows(attempts, created=0, now=100)
    assert table[0][:4] == ["h1", "0", "3", "2 (2000 MiB)"]
    assert table[1][4] == "c#2 800 MiB 55-100 s"   # still running: up to now


def test_most_at_once_of_nothing_is_zero() -> None:
    assert most_at_once([], 0) == (0, 0)
    assert most_at_once([Tenancy("x", 1, 5, 0, 1)], 2) == (1, 5)


def test_what_a_gpus_tenants_held_per_second_sums_each_jobs_highest_sample() -> None:
    from launcher.memfiles import SampleRow

    def s(t: float, gpu: str, mib: float | None) -> SampleRow:
        return SampleRow(t, "n", "h", "host", 1, gpu, None, None, None, None, mib, {}, None, "")
    got = held_per_second({"a": [s(10.1, "0", 500), s(10.6, "0", 700), s(11.2, "0", 650)],
                           "b": [s(10.4, "0", 300), s(10.9, "1", 900), s(11.0, "0", None)]})
    assert got == {("0", 10): 1000, ("0", 11): 650, ("1", 10): 900}
