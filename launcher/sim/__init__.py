"""A simulator for the controller's policy code: a virtual clock and simulated jobs.

It drives `launcher.control.core.Core` (states, readiness, books, the scheduling policy) and
`launcher.supervision.policy.FailurePolicy` exactly as the controller does, with the Ray side replaced
by events on a virtual clock: a 10,000-job DAG on 512 GPUs replays in seconds. It is the
regression test for policy changes (tests/unit/launcher/sim) and the `simulate` bench piece.
"""
