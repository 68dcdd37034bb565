"""Memory sizes as people write them ('24GiB', '800MiB', '1.5G'), as whole MiB. Stdlib only: the
plan's keys (launcher/spec.py) and the command line (launcher/cliargs.py, quick --help) use it."""

from __future__ import annotations

import re
from typing import Any

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(MiB|GiB|TiB|MB|GB|TB|M|G|T)?\s*$", re.I)
# GPU memory is binary, as NVML reports it: GB is read as GiB
SIZE_MIB = {"mib": 1, "m": 1, "mb": 1, "gib": 1024, "g": 1024, "gb": 1024, "tib": 1024 ** 2, "t": 1024 ** 2,
            "tb": 1024 ** 2}


def mib_of(v: Any) -> int:
    """A size, or a bare number of MiB, as whole MiB; ValueError with the accepted forms otherwise."""
    m = SIZE_RE.match(str(v)) if not isinstance(v, bool) else None
    if m is None:
        raise ValueError(f"expected a size such as 24GiB, 800MiB or a number of MiB (got {v!r})")
    return int(float(m.group(1)) * SIZE_MIB[(m.group(2) or "mib").lower()])
