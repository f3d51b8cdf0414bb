"""Text helpers for what palette-lens shows of generated text."""

from __future__ import annotations


def truncate(text: str, n: int = 160) -> str:
    """One line of at most ``n`` characters: generated text in reports, notebooks and tests is always shortened
    (data ethics: long harmful completions are never kept).

    Whitespace runs (newlines included) collapse to one space; text longer than ``n`` is cut to ``n - 1``
    characters plus ``…``.

    Args:
        text: The text to shorten.
        n: The most characters in the result (the ellipsis counts as one).

    Returns:
        The text on one line, at most ``n`` characters long.

    Examples:
        >>> truncate("Sure,\\n here is   a long answer", 12)
        'Sure, here …'
    """
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
