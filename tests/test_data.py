"""Data loaders and splits: built-in data, user files, errors, and split properties (hypothesis)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palette_lens.data import HARMLESS, load_prompts, read_jsonl, split_prompts
from palette_lens.errors import DataError, UnknownDomainError

REQUIRED = {"cyber", "violence", "hate", "illegal"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_builtin_data_meets_the_contract(prompts):
    harmful = prompts.harmful_domains
    assert REQUIRED <= set(harmful) and len(harmful) >= 6
    counts = prompts.counts()
    for d in harmful:
        assert counts[d] >= 80, d
    assert counts[HARMLESS] >= 400
    assert counts["borderline"] >= 80
    all_prompts = [p for d in prompts.domains for p in prompts.prompts(d)]
    assert len(all_prompts) == len(set(all_prompts)), "duplicate prompts across domains"


def test_split_is_20_80_with_validation_from_train(prompts):
    for d in prompts.domains:
        s = prompts.split(d)
        n = len(prompts.prompts(d))
        assert abs((len(s.train) + len(s.val)) / n - 0.2) < 0.02
        assert len(s.val) >= 1 and len(s.train) >= 1
        assert set(s.train).isdisjoint(s.test) and set(s.val).isdisjoint(s.test) and set(s.train).isdisjoint(s.val)
        assert sorted(s.train + s.val + s.test) == sorted(prompts.prompts(d))


def test_user_file_adds_and_replaces_domains(tmp_path):
    rows = [{"prompt": f"How do I falsify lab result number {i}?", "domain": "lab_fraud", "id": i} for i in range(10)]
    f = write_jsonl(tmp_path / "user.jsonl", rows)
    ps = load_prompts([f])
    assert "lab_fraud" in ps.harmful_domains and "cyber" in ps.harmful_domains
    assert ps.by_domain["lab_fraud"][0].to_dict()["id"] == 0  # extra keys are kept
    only = load_prompts([f], replace=True)
    assert only.harmful_domains == ["lab_fraud"]
    assert HARMLESS in only.domains  # the built-in harmless set stays unless the files bring their own
    own_harmless = write_jsonl(tmp_path / "h.jsonl", [{"prompt": f"Say hi {i}", "domain": HARMLESS} for i in range(6)])
    assert len(load_prompts([f, own_harmless], replace=True).prompts(HARMLESS)) == 6


def test_unknown_domain_lists_known_ones(prompts):
    with pytest.raises(UnknownDomainError, match="unknown domain 'nope'.*cyber"):
        prompts.part("nope", "test")


@pytest.mark.parametrize("content,match", [
    ('{"prompt": "a", "domain": "x"}\nnot json\n', r"user.jsonl:2: not valid JSON"),
    ('{"prompt": "", "domain": "x"}\n', r"user.jsonl:1: 'prompt' must be"),
    ('{"prompt": "a"}\n', r"user.jsonl:1: 'domain' must be"),
    ('["a", "b"]\n', r"user.jsonl:1: expected a JSON object"),
    ("", r"user.jsonl: the file holds no records"),
    ("\n\n", r"user.jsonl: the file holds no records"),
])
def test_malformed_files_name_file_and_line(tmp_path, content, match):
    f = tmp_path / "user.jsonl"
    f.write_text(content)
    with pytest.raises(DataError, match=match):
        read_jsonl(f)


def test_too_few_prompts_to_split(tmp_path):
    f = write_jsonl(tmp_path / "u.jsonl", [{"prompt": f"p{i}", "domain": "tiny"} for i in range(3)])
    ps = load_prompts([f])
    with pytest.raises(DataError, match="'tiny' has 3 prompts"):
        ps.split("tiny")


@settings(max_examples=200, deadline=None)
@given(
    prompts=st.lists(st.text(min_size=1, max_size=8), min_size=5, max_size=300, unique=True),
    seed=st.integers(0, 2**16),
    frac=st.floats(0.05, 0.9),
)
def test_split_properties(prompts, seed, frac):
    s = split_prompts(prompts, seed=seed, train_frac=frac)
    parts = s.train + s.val + s.test
    assert sorted(parts) == sorted(prompts)  # a partition: nothing lost, nothing duplicated
    assert len(s.train) >= 1 and len(s.val) >= 1 and len(s.test) >= 1
    assert split_prompts(prompts, seed=seed, train_frac=frac) == s  # deterministic
    # Order of the input does not matter beyond the seed's shuffle of the same list.
    assert split_prompts(list(prompts), seed=seed, train_frac=frac).test == s.test


@settings(max_examples=50, deadline=None)
@given(n=st.integers(5, 400), seed=st.integers(0, 1000))
def test_split_sizes_follow_the_fraction(n, seed):
    s = split_prompts([f"p{i}" for i in range(n)], seed=seed)
    n_train = len(s.train) + len(s.val)
    assert abs(n_train - max(2, round(0.2 * n))) <= 1
