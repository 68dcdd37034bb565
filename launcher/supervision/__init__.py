"""Supervision: what an attempt is doing (`watch`), what kind of failure ended it (`failure`),
and what happens next (`policy`: a pure `FailurePolicy.decide`, journalled and replayed)."""
