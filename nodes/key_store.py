"""The fal key saved from ComfyUI's settings dialog: one file, readable by its owner only.

The file is written under a temporary name created with mode 0600 and then renamed over the old
one, so that no reader ever sees a half-written key and the key never sits in a file that others
can read, not even for a moment.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping

from ..fal_core.config import key_from_env, key_from_file
from ..fal_core.private_files import private_folder


def save(path: Path, key: str) -> None:
    private_folder(path.parent)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def clear(path: Path) -> None:
    path.unlink(missing_ok=True)


def status(path: Path, env: Mapping[str, str]) -> dict:
    """Whether the nodes have a key and where it comes from ("env" wins over "file"); never the key."""
    if key_from_env(env) is not None:
        return {"configured": True, "source": "env"}
    if key_from_file(path) is not None:
        return {"configured": True, "source": "file"}
    return {"configured": False, "source": None}
