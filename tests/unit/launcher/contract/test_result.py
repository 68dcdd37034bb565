"""result.json through the contract: what a method writes is what the driver reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.contract import Result, read_result, write_result
from launcher.contract.result import read_json


def test_a_result_round_trips_with_what_the_method_added(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_result(path, Result("succeeded", {"hs": 12.5}, adapter="/a", extra={"judge": "keyword"}))
    assert read_json(path)["judge"] == "keyword" and "extra" not in read_json(path)
    back = read_result(path)
    assert back is not None and (back.status, back.metrics, back.adapter, back.extra) == \
        ("succeeded", {"hs": 12.5}, "/a", {"judge": "keyword"})


def test_no_file_is_no_result_and_a_foreign_file_is_an_error(tmp_path: Path) -> None:
    assert read_result(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text('{"status": "maybe"}')
    with pytest.raises(ValueError, match="bad.json is not a result"):
        read_result(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json is not a result"):
        read_result(tmp_path / "list.json")
