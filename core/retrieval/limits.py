"""The limits every upload is held to (size, unpacked size, characters, compression ratio, binary
content) and how their sizes are written in messages."""

from __future__ import annotations

from dataclasses import dataclass, fields

from core.errors import InputError, SettingsError

MAX_UPLOAD_MB = 10  # per file, in MiB; .streamlit/config.toml's server.maxUploadSize must say the same
MB = 1024 * 1024


@dataclass
class ParseSettings:
    """Limits applied to every upload."""

    max_bytes: int = MAX_UPLOAD_MB * MB  # larger uploads are rejected, never truncated
    max_chars: int = MAX_UPLOAD_MB * MB  # text one upload may yield: as much as the largest .txt
    max_unpacked_bytes: int = 4 * MAX_UPLOAD_MB * MB  # what a .docx (a zip) may unpack to, in all
    max_compression_ratio: float = 100.0  # a zip member of 4 MB or more packed tighter than this is
    # refused unread: Word's XML packs about 10:1, zip bombs about 1000:1
    max_control_ratio: float = 0.05  # a "text" file with more control characters than this is binary

    def __post_init__(self) -> None:
        defaults = {f.name: f.default for f in fields(self)}
        for limit in ("max_bytes", "max_unpacked_bytes"):
            if getattr(self, limit) < 1:
                raise SettingsError(
                    f"{limit} must be positive, got {getattr(self, limit)}; "
                    f"the default is {mb(defaults[limit])}."
                )
        if self.max_chars < 1:
            raise SettingsError(
                f"max_chars must be positive, got {self.max_chars}; the default is {defaults['max_chars']:,}."
            )
        if self.max_compression_ratio < 1:
            raise SettingsError(
                f"max_compression_ratio must be at least 1, got {self.max_compression_ratio}; try 100."
            )
        if not 0.0 <= self.max_control_ratio <= 1.0:
            raise SettingsError(
                f"max_control_ratio must be between 0 and 1, got {self.max_control_ratio}; try 0.05."
            )


def mb(n_bytes: int) -> str:
    """A size as people read it: '10.0 MB', '12 KB'."""
    return f"{n_bytes / MB:,.1f} MB" if n_bytes >= MB else f"{n_bytes / 1024:,.0f} KB"


def check_chars(name: str, n_chars: int, settings: ParseSettings) -> None:
    """Refuse an upload whose text is longer than one upload may add."""
    if n_chars > settings.max_chars:
        raise InputError(
            f"'{name}' holds more than {settings.max_chars:,} characters of text, the most one upload may "
            "add; split it into smaller files."
        )
