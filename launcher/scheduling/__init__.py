"""Which ready job goes where, and when: the scheduling policy behind a small interface.

Pure code, no Ray: the controller and the simulator (launcher/sim) call the same policy with the same
typed inputs (`Candidate`, `Holding`, `Books`) and apply the `Placement`s it returns.
"""
