"""The errors core raises; pages turn them into messages with `st.error(str(e))`."""

from __future__ import annotations


class VectorLabError(Exception):
    """Base class: its message is written for the person using the app."""


class ModelLoadError(VectorLabError):
    """A model could not be found, downloaded, converted or loaded."""


class UnsupportedModelError(ModelLoadError):
    """The model loaded but its architecture is not one Vector Lab can trace."""


class InputError(VectorLabError):
    """Text, files or settings the user gave cannot be used as they are."""


class SettingsError(InputError):
    """A setting (a learning rate, a step count, a choice) is out of range; the message says how to fix it."""


class DataDirError(VectorLabError):
    """The data directory (`VECTORLAB_DATA_DIR`) cannot be created, is not a folder, or is read-only."""
