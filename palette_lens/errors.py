"""Exceptions with messages meant for users; the CLI prints them as one line."""

from __future__ import annotations


class PaletteError(Exception):
    """Base class: a problem the user can fix (bad input, missing file, mismatch).

    Catch it to handle every palette-lens error at once; the CLI prints its message as one line.

    Examples:
        >>> try:
        ...     raise PaletteError("no run folder at runs/x")
        ... except PaletteError as err:
        ...     print(err)
        no run folder at runs/x
    """


class DataError(PaletteError):
    """Malformed, empty or inconsistent prompt data.

    Examples:
        >>> issubclass(DataError, PaletteError)
        True
        >>> raise DataError("prompts.jsonl line 3: no 'prompt' field")
        Traceback (most recent call last):
        palette_lens.errors.DataError: prompts.jsonl line 3: no 'prompt' field
    """


class UnknownDomainError(DataError):
    """A domain that the loaded data does not contain.

    Examples:
        >>> try:
        ...     raise UnknownDomainError("unknown domain 'chem'")
        ... except DataError as err:  # also caught as DataError and PaletteError
        ...     print(type(err).__name__, err)
        UnknownDomainError unknown domain 'chem'
    """


class ModelLoadError(PaletteError):
    """A model could not be found, verified or loaded.

    Examples:
        >>> try:
        ...     raise ModelLoadError("no model at /models/x")
        ... except PaletteError as err:
        ...     print(err)
        no model at /models/x
    """


class IntegrityError(ModelLoadError):
    """A file's hash does not match the pinned value.

    Examples:
        >>> issubclass(IntegrityError, ModelLoadError)
        True
        >>> raise IntegrityError("model.safetensors: sha256 mismatch")
        Traceback (most recent call last):
        palette_lens.errors.IntegrityError: model.safetensors: sha256 mismatch
    """


class ChatTemplateError(ModelLoadError):
    """The tokenizer has no chat template.

    Examples:
        >>> try:
        ...     raise ChatTemplateError("tokenizer has no chat template")
        ... except ModelLoadError as err:
        ...     print(err)
        tokenizer has no chat template
    """


class AdapterMismatchError(PaletteError):
    """An adapter was made for another base model or block.

    Examples:
        >>> try:
        ...     raise AdapterMismatchError("adapter was baked for block 12, not 14")
        ... except PaletteError as err:
        ...     print(err)
        adapter was baked for block 12, not 14
    """
