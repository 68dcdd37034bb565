"""Ray's token authentication for clusters these commands start.

Ray 2.60 turns token auth on for `ray start` only when RAY_AUTH_MODE=token or a token file already
exists, and the file it writes itself (~/.ray/auth_token) takes the umask (0644 under 022). We write
the token first, 0600 from the moment it exists, and start every daemon with the mode set, so a
head never runs open and the token is never readable by other users.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

MODE_ENV = "RAY_AUTH_MODE"
PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_ENV = "RAY_AUTH_TOKEN"


def default_token_path() -> Path:
    """Ray's own default, so `ray status` and drivers on this host find it without flags."""
    return Path.home() / ".ray" / "auth_token"


class TokenProblem(RuntimeError):
    pass


def ensure_token(path: Path) -> tuple[Path, bool]:
    """The token file at `path`, created 0600 (parents 0700) if absent; (path, created).
    An existing file readable by group or others is tightened to 0600: Ray's own leaves it 0644."""
    path = path.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        read_token(path)   # empty or unreadable: say so now, not as a Ray traceback later
        return path, False
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))   # Ray's own generator makes the same 64 hex characters
    return path, True


def read_token(path: Path) -> str:
    try:
        token = path.expanduser().read_text().strip()
    except OSError as e:
        raise TokenProblem(f"cannot read the Ray token {path}: {e.strerror}; copy the head's token there "
                           "(or pass --token PATH)") from None
    if not token:
        raise TokenProblem(f"the Ray token {path} is empty; copy the head's token there (or pass --token PATH)")
    return token


def auth_env(path: Path) -> dict[str, str]:
    """What a daemon or driver needs in its environment to require and present the token.
    The path, never the token itself: environments end up in logs and process listings."""
    return {MODE_ENV: "token", PATH_ENV: str(path.expanduser())}
