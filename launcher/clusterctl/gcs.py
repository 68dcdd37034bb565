"""Reading a cluster's node table straight from its GCS, without joining it as a driver.

`ray.init(address=...)` attaches a driver to a raylet on *this* host (Ray 2.60 finds one by
scanning local processes) and fails on a host that runs none: a host about to join, or one
asking for status or stopping a run from outside the cluster. The GCS answers any host that has
the address and the token (read from the environment, as by every Ray process).
"""

from __future__ import annotations

from typing import Any


class Unreachable(RuntimeError):
    """The GCS did not answer (wrong address, not up yet, or the token was refused)."""


def node_table(address: str) -> list[dict[str, Any]]:
    """What `ray.nodes()` returns (the same dicts, Labels included), asked of the GCS at `address`."""
    from ray._private.state import GlobalState
    from ray._raylet import GcsClientOptions

    state = GlobalState()
    state._initialize_global_state(GcsClientOptions.create(address, None, allow_cluster_id_nil=True,
                                                           fetch_cluster_id_if_nil=False))
    try:
        return state.node_table()
    except Exception as e:   # noqa: BLE001 - Ray raises its RpcError, RaySystemError or ConnectionError here
        raise Unreachable(f"the Ray cluster at {address} did not answer: {e}") from e
    finally:
        state.disconnect()
