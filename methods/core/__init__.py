"""What every method's rank shares, so a fix lands once and a new method is one module.

A recipe reads top to bottom: `RankJob.start(job)` (rank.py), the method's own model, data and
loop, then `finish_training(...)` (training.py, for Trainer recipes) or `rank.finish(result, ...)`.
Around it: the process group (dist.py), the compute dtype (precision.py), the Trainer callbacks
the supervisor reads (callbacks.py). tests/unit/methods/core/test_rank.py fails when a method
module makes these calls itself.
"""
