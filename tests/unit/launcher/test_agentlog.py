"""The node agent's own log file: stdout, stderr and launcher logging teed into the run directory."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from launcher.agentlog import agent_log, close_agent_log, open_agent_log
from launcher.layout import JobDir


def test_agent_output_and_monitor_logging_reach_the_file(tmp_path: Path, capsys) -> None:
    path = agent_log(JobDir(tmp_path / "job"), 2, 1)
    assert path == tmp_path / "job" / "logs" / "attempt-2" / "agent-node1.log"
    log = open_agent_log(path, "agent of train attempt 2 node rank 1")
    try:
        print("hello from the agent")
        sys.stderr.write("an error line\n")
        logging.getLogger("launcher.monitor").error("monitor sample failed")
        logging.getLogger("launcher.monitor").debug("not at INFO")
    finally:
        close_agent_log(log)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].endswith(")") and "agent of train attempt 2 node rank 1 (host " in lines[0]
    assert "hello from the agent" in lines and "an error line" in lines
    assert any(line.endswith("ERROR launcher.monitor: monitor sample failed") for line in lines)
    assert "not at INFO" not in text
    captured = capsys.readouterr()   # teed, not moved: the original streams still got it
    assert "hello from the agent" in captured.out and "an error line" in captured.err
    print("after close")
    assert "after close" not in path.read_text()


def test_two_groups_in_one_host_each_get_every_line_once(tmp_path: Path) -> None:
    import logging
    import sys
    a = open_agent_log(tmp_path / "a.log", "group a")
    b = open_agent_log(tmp_path / "b.log", "group b")
    try:
        print("both open")
        logging.getLogger("launcher.test").warning("logged once")
    finally:
        close_agent_log(a)
    print("only b")
    close_agent_log(b)
    print("neither")
    a_text, b_text = (tmp_path / "a.log").read_text(), (tmp_path / "b.log").read_text()
    assert a_text.count("both open") == 1 and b_text.count("both open") == 1
    assert a_text.count("logged once") == 1 and b_text.count("logged once") == 1
    assert "only b" not in a_text and "only b" in b_text and "neither" not in b_text
    assert not hasattr(sys.stdout, "streams")
