"""Where Vector Lab keeps what it writes: the data directory and the model cache."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root for everything Vector Lab writes (`VECTORLAB_DATA_DIR`, default `<project>/data`)."""
    path = Path(os.environ.get("VECTORLAB_DATA_DIR", PROJECT_ROOT / "data"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache_dir() -> Path:
    """Converted models live here (`VECTORLAB_CACHE_DIR`, default `~/.cache/vectorlab/models`)."""
    default = Path.home() / ".cache" / "vectorlab" / "models"
    path = Path(os.environ.get("VECTORLAB_CACHE_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path
