"""Where Vector Lab keeps what it writes: the data directory and the model cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from core.errors import DataDirError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "VECTORLAB_DATA_DIR"
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"


def data_dir() -> Path:
    """Root for everything Vector Lab writes (`VECTORLAB_DATA_DIR`, default `<project>/data`).

    Created if missing, and checked with a real write (a temporary file, removed at once), because
    permission bits do not tell: root ignores them and a read-only mount ignores root. Raises
    `DataDirError` saying which directory, why, and how to fix it.
    """
    path = Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    if path.exists() and not path.is_dir():
        raise _unusable(path, "it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else (e.strerror or str(e))
        raise _unusable(path, f"it cannot be created: {why}") from e
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise _unusable(path, f"it is not writable: {e.strerror or e}") from e
    return path


def _unusable(path: Path, why: str) -> DataDirError:
    return DataDirError(
        f"The data directory {path} cannot be used: {why}. Set {DATA_DIR_ENV} to a folder Vector Lab "
        f"can write to (it is created if missing), or unset it to use {DEFAULT_DATA_DIR}."
    )


def model_cache_dir() -> Path:
    """Converted models live here (`VECTORLAB_CACHE_DIR`, default `~/.cache/vectorlab/models`)."""
    default = Path.home() / ".cache" / "vectorlab" / "models"
    path = Path(os.environ.get("VECTORLAB_CACHE_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path
