"""The known-broken transformers / transformer-lens pair is refused with a clear message."""

import pytest

from palette_lens.errors import ModelLoadError
from palette_lens.models.stack_check import _release, check_stack, stack_problem


@pytest.mark.parametrize(
    "text, want",
    [("5.23.0", (5, 23, 0)), ("5.24.0rc1", (5, 24, 0)), ("4.3.0.post1", (4, 3, 0)), ("5.24", (5, 24))],
)
def test_release_parts(text, want):
    assert _release(text) == want


def test_cache_rename_pair_is_refused_and_neighbours_are_not():
    assert "past_key_values" in stack_problem("5.24.0", "4.3.0")
    assert stack_problem("5.30.1", "4.2.9") is not None
    assert stack_problem("5.23.0", "4.3.0") is None
    assert stack_problem("5.24.0", "4.3.1") is None


def test_installed_stack_passes_and_a_broken_one_raises(monkeypatch):
    check_stack()  # the versions this checkout installs (constraints.txt) are fine
    import palette_lens.models.stack_check as sc

    monkeypatch.setattr(sc, "version", lambda name: {"transformers": "5.24.0", "transformer-lens": "4.3.0"}[name])
    with pytest.raises(ModelLoadError, match="transformers<5.24"):
        sc.check_stack()
