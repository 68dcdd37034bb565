"""The contract between the launcher and the ranks: everything a method (methods/) may use of the
launcher, in one place. Typed: the job file a rank reads (`JobFile`, pydantic), the heartbeat it
writes (`Heartbeat`), its result (`Result`), the job directory's layout (`JobDir`), atomic file
writes, checkpoint markers and the OOM-kill test hook. It imports neither ray nor torch, and
`methods/` imports the launcher only through it (tests/unit/test_boundaries.py holds both).
The node host's reports to the driver are the other half of the wire: launcher/node/messages.py.
"""

from launcher import checkpoints, heartbeat, oomkill
from launcher.atomic import append_jsonl, read_json, read_jsonl, write_json, write_text
from launcher.contract.result import Result, read_result, write_result
from launcher.heartbeat import Heartbeat, Phase, own_peak_rss_mib
from launcher.heartbeat import write as write_heartbeat
from launcher.layout import JobDir
from launcher.pathcheck import NAME_CHARS_MAX, file_name_problem
from launcher.spec import DataSource, JobFile, LoraSpec, ModelSpec

__all__ = ["checkpoints", "heartbeat", "oomkill", "append_jsonl", "read_json", "read_jsonl", "write_json", "write_text",
           "Result", "read_result", "write_result", "Heartbeat", "Phase", "own_peak_rss_mib", "write_heartbeat",
           "JobDir", "NAME_CHARS_MAX", "file_name_problem", "DataSource", "JobFile", "LoraSpec", "ModelSpec"]
