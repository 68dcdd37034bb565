"""`python -m launcher.nodeinfo`: prints "<gpu count> <gpu type|none>" of this server (for cluster/start-node.sh)."""

from __future__ import annotations

import sys

from launcher.cluster import local_gpus


def main() -> int:
    count, kind = local_gpus()
    print(count, kind or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
