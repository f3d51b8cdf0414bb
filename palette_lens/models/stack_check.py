"""Refuse library combinations known to give wrong numbers silently.

transformers 5.24 renamed the attention and decoder-layer keyword ``past_key_values`` to ``cache``;
transformer-lens 4.3.0's TransformerBridge still forwards ``past_key_values``, so the KV cache never
reaches the attention and every cached forward pass (generation after the first token, the shared-prefix
scorer) computes garbage without any error. palette-lens checks the installed versions before wrapping a
model and stops with a clear message instead.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version

from palette_lens.errors import ModelLoadError

# (transformers version from which it breaks, last transformer-lens version known to be affected)
_CACHE_RENAME = ((5, 24), (4, 3, 0))


def _release(text: str) -> tuple[int, ...]:
    """Release numbers of a version string, pre/post/dev parts dropped: '5.24.0rc1' -> (5, 24, 0)."""
    return Version(text).release


def stack_problem(transformers_version: str, transformer_lens_version: str) -> str | None:
    """Why this pair of versions gives wrong results, or None when it is fine."""
    broken_from, last_affected = _CACHE_RENAME
    if _release(transformers_version) >= broken_from and _release(transformer_lens_version) <= last_affected:
        return (
            f"transformers {transformers_version} with transformer-lens {transformer_lens_version} drops the KV "
            "cache (transformers 5.24 renamed past_key_values to cache), so generation and cached scoring "
            "would be wrong; install the tested versions: pip install 'transformers<5.24' "
            "(or pip install -c constraints.txt -e . in a palette-lens checkout)"
        )
    return None


def check_stack() -> None:
    """Raise ModelLoadError when the installed transformers / transformer-lens pair is known to be broken."""
    try:
        problem = stack_problem(version("transformers"), version("transformer-lens"))
    except PackageNotFoundError:
        return
    if problem:
        raise ModelLoadError(problem)
