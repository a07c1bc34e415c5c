"""Folders and files only their owner can read: the one place the pack's state is created.

The state folder holds the key file, the journal (prompts, request ids, results), downloaded
results and caches. Every writer creates its folder through :func:`private_folder`, so whichever
runs first (the journal, the key dialog, a cache) makes it 0700, never 0755, and each file in it
is written 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def private_folder(path: Path) -> Path:
    """Create ``path`` and its missing parents with mode 0700; folders that exist are left as
    they are (a journal may live in a folder shared with other things)."""
    missing = []
    folder = Path(path)
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # another process made it meanwhile
            pass
    return Path(path)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one), mode 0600."""
    private_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
