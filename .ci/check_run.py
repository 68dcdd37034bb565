"""`bin/status --json | python3 .ci/check_run.py`: exit 0 only if the run and every one of its jobs succeeded."""

from __future__ import annotations

import json
import sys


def main() -> int:
    st = json.load(sys.stdin)
    bad = [f"{j['name']}: {j['state']}" for j in st["jobs"] if j["state"] != "succeeded"]
    done = len(st["jobs"]) - len(bad)
    print(f"[ci] run {st['run']}: {st['state']}, {done}/{len(st['jobs'])} jobs succeeded" + (f" ({', '.join(bad)})" if bad else ""))
    return 1 if bad or st["state"] != "succeeded" else 0


if __name__ == "__main__":
    sys.exit(main())
