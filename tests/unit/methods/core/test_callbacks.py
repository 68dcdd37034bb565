"""The heartbeat callback's progress inside a phase: counted per unit, written at most once a second."""

from __future__ import annotations

from launcher import heartbeat
from methods.core import callbacks
from methods.core.callbacks import HeartbeatCallback


def test_advance_counts_units_and_throttles_writes(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: clock[0])
    hb = HeartbeatCallback(tmp_path / "hb.json", rank=0, attempt=1)
    hb.beat("evaluating", 7, 10)
    for _ in range(3):            # three quick batches: counted, not written
        clock[0] += 0.2
        hb.advance()
    assert heartbeat.read(tmp_path / "hb.json").progress == 0
    clock[0] += 0.5               # a second after the last write: this batch is written, with all four
    hb.advance()
    on_disk = heartbeat.read(tmp_path / "hb.json")
    assert (on_disk.phase, on_disk.step, on_disk.progress) == ("evaluating", 7, 4) and on_disk.time > 101
    hb.beat("saving")             # a new phase starts counting from zero
    assert heartbeat.read(tmp_path / "hb.json").progress == 0


def test_a_heartbeat_file_that_is_not_a_heartbeat_reads_as_none(tmp_path):
    for junk in (b"{not json", b"\xff\xfe", b"[1, 2]", b'{"rank": 0}'):
        (tmp_path / "hb.json").write_bytes(junk)
        assert heartbeat.read(tmp_path / "hb.json") is None
