"""Exceptions with messages meant for users; the CLI prints them as one line."""

from __future__ import annotations


class PaletteError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatch)."""


class DataError(PaletteError):
    """Malformed, empty or inconsistent prompt data."""


class UnknownDomainError(DataError):
    """A domain that the loaded data does not contain."""


class ModelLoadError(PaletteError):
    """A model could not be found, verified or loaded."""


class IntegrityError(ModelLoadError):
    """A file's hash does not match the pinned value."""


class ChatTemplateError(ModelLoadError):
    """The tokenizer has no chat template."""


class AdapterMismatchError(PaletteError):
    """An adapter was made for another base model or block."""
