"""Where the files the launcher ships (ds_configs/, plans/) are: inside the installed package, or
next to the source in a checkout.

pyproject.toml maps the top-level ds_configs/ and plans/ into the wheel as launcher/ds_configs and
launcher/plans (setuptools package-dir), so an installed launcher finds them through
importlib.resources; a checkout has no such folders under launcher/ and uses the top-level ones.
Stdlib only: `sl examples` and the help paths import this without the venv.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def _packaged(name: str) -> Path:
    # A wheel installs unzipped, so the package's Traversable is a real directory.
    return Path(str(importlib.resources.files("launcher").joinpath(name)))


def shipped_dir(name: str, checkout: Path = CHECKOUT) -> Path:
    """launcher/<name> when the package carries it (an installed wheel), else <checkout>/<name>."""
    packaged = _packaged(name)
    return packaged if packaged.is_dir() else checkout / name


def ds_configs_dir(checkout: Path = CHECKOUT) -> Path:
    return shipped_dir("ds_configs", checkout)


def plans_dir(checkout: Path = CHECKOUT) -> Path:
    return shipped_dir("plans", checkout)
