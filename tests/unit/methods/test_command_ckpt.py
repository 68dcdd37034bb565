"""A script's own checkpoints: whole ones only, mirrored as pointers, turned back into a resume path."""

from __future__ import annotations

from pathlib import Path

from launcher import checkpoints
from methods import command_ckpt


def save(job: Path, step: int, whole: bool = True, torn: bool = False) -> Path:
    ck = job / "out" / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"w" * step)
    if whole:
        (ck / "trainer_state.json").write_text('{"global_step": %d' % step + ("" if torn else "}"))
    return ck


def test_only_whole_checkpoints_count_and_a_torn_state_file_is_not_whole(tmp_path: Path) -> None:
    a, b = save(tmp_path, 10), save(tmp_path, 20)
    save(tmp_path, 30, whole=False)
    save(tmp_path, 40, torn=True)
    assert command_ckpt.script_checkpoints(tmp_path, "out/checkpoint-*", "trainer_state.json") == [
        (10, a.resolve()), (20, b.resolve())]


def test_mirror_makes_pointers_the_launcher_reads_and_drops_rotated_ones(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    a, b = save(tmp_path, 10), save(tmp_path, 20)
    command_ckpt.mirror(root, command_ckpt.script_checkpoints(tmp_path, "out/checkpoint-*", "trainer_state.json"))
    assert [checkpoints.step_of(p) for p in checkpoints.complete_checkpoints(root)] == [10, 20]
    assert checkpoints.verify(root / "checkpoint-20") is None
    import shutil
    shutil.rmtree(a)   # the script's save_total_limit rotated it away
    command_ckpt.mirror(root, command_ckpt.script_checkpoints(tmp_path, "out/checkpoint-*", "trainer_state.json"))
    assert [checkpoints.step_of(p) for p in checkpoints.complete_checkpoints(root)] == [20]
    assert command_ckpt.resume_source(str(root / "checkpoint-20"), tmp_path, "out/checkpoint-*",
                                      "trainer_state.json") == b.resolve()


def test_resume_falls_back_to_the_newest_whole_one_when_the_pointer_is_gone(tmp_path: Path) -> None:
    b = save(tmp_path, 20)
    assert command_ckpt.resume_source(None, tmp_path, "{dir}/out/checkpoint-*", "trainer_state.json") == b.resolve()
    assert command_ckpt.resume_source(str(tmp_path / "checkpoints" / "checkpoint-10"), tmp_path, "out/checkpoint-*",
                                      "trainer_state.json") == b.resolve()
    assert command_ckpt.resume_source(None, tmp_path / "nothing", "out/checkpoint-*", "trainer_state.json") is None
