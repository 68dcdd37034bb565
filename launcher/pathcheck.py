"""What the OS accepts as a path or a file name, checked before the plan loader touches the filesystem.

A path the OS refuses does not fail with "no such file": os.stat raises (ValueError for a NUL,
ENAMETOOLONG for a long name). The loader asks here first, so such a value is a plan problem.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME_MAX = 255     # bytes in one path component (Linux, macOS)
PATH_MAX = 4096    # bytes in a whole path, its terminating NUL included (Linux)

# Job and plan names: the longest file name built from a job name is an evaluation's temporary
# seed file, `.<job>_sentiment_eval.json.<8 random>.tmp` (34 bytes more); a run id is the plan
# name and 21 more. 200 keeps both under NAME_MAX with room to spare.
NAME_CHARS_MAX = 200

NUL_PROBLEM = "holds a NUL byte (\\0), which no path, name or environment variable can hold; remove it"


def clip(value: object, n: int = 60) -> str:
    """repr(value) for a message, cut with an ellipsis: a 300-character name need not be shown whole."""
    r = repr(value)
    return r if len(r) <= n else r[:n] + "..."


def path_problem(value: str) -> str | None:
    """Why `value` can never be a path here, or None. ${job.output} references count as written."""
    if "\0" in value:
        return NUL_PROBLEM
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        return "is not valid Unicode text (it holds a lone surrogate); retype the value"
    long = max(raw.split(b"/"), key=len)
    if len(long) > NAME_MAX:
        return (f"a path component of {len(long)} bytes ({long[:40].decode(errors='replace')}...); "
                f"file names are at most {NAME_MAX} bytes: shorten it")
    if len(raw) >= PATH_MAX:
        return f"a path of {len(raw)} bytes; paths are at most {PATH_MAX - 1} bytes: shorten it"
    return None


def file_name_problem(name: str, limit: int = NAME_MAX) -> str | None:
    """Why `name` cannot be one file or directory name (no '/', not '.' or '..', at most `limit` bytes)."""
    if "\0" in name:
        return NUL_PROBLEM
    if "/" in name or not name.strip("."):
        return f"must be a plain file name, without '/' and not '.' or '..' (got {clip(name)})"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > limit:
        return f"{size} bytes; at most {limit} (a file or directory is named after it)"
    return None


def exists(p: Path) -> bool:
    """Path.exists, False where the OS will not say (a directory it may not search, a loop)."""
    try:
        return p.exists()
    except (OSError, RuntimeError):
        return False


def is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except (OSError, RuntimeError):
        return False


def is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except (OSError, RuntimeError):
        return False
