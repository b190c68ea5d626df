"""Atomic file writes: a temporary file in the same directory, flushed, then ``os.replace``.

A killed process therefore leaves either the old file or the new one, never half of one; run
directories, eval results and tables are all written this way (design.md: run directory).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: the process's umask, restored at once


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (mode from the umask, not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any, **dumps_options: Any) -> None:
    """Write ``payload`` as indented JSON atomically (``dumps_options`` go to ``json.dumps``)."""
    options = {"indent": 2, **dumps_options}
    write_text_atomic(path, json.dumps(payload, **options) + "\n")
