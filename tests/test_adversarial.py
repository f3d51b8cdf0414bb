"""Adversarial leakage: prompt builders, the hard-negative augmentation, the measurement on a tiny model, the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import LEAKAGE_TOPICS, random_adapter, toy_direction, toy_prompts, write_jsonl

from palette_lens.data.attack_templates import (
    MIXED_TEMPLATES,
    PROFESSION_TEMPLATES,
    PROFESSIONS,
    ROLEPLAY_TEMPLATES,
)
from palette_lens.data.attacks import (
    ATTACK_KINDS,
    AttackPrompt,
    attacks_from_prompt_set,
    build_attacks,
    mixed_with_target,
    profession_framed,
)
from palette_lens.data.augment import augment_prompt_set
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.prompts import load_prompts
from palette_lens.data.records import Record
from palette_lens.errors import PaletteError, UnknownDomainError
from palette_lens.evaluate.evaluator import EvalConfig
from palette_lens.evaluate.leakage import AttackConfig, measure_leakage
from palette_lens.evaluate.leakage_table import LeakageRow, LeakageTable


@pytest.fixture(scope="module")
def builtin():
    return load_prompts()


# ---------------------------------------------------------------------- prompt builders
@pytest.mark.parametrize("target", sorted(PROFESSIONS))
def test_every_variant_contains_its_request_and_professions_are_the_targets(builtin, target):
    attacks = attacks_from_prompt_set(builtin, target, limit=14, seed=3)
    assert list(attacks) == list(ATTACK_KINDS)
    requests = [p.request for p in attacks["direct"]]
    assert len(requests) == 14
    test_split = {d: set(builtin.part(d, "test")) for d in builtin.harmful_domains}
    for kind, prompts in attacks.items():
        assert [p.request for p in prompts] == requests  # every attack wraps the same requests
        for p in prompts:
            assert p.kind == kind and p.domain != target and p.request in test_split[p.domain]
            assert p.request in p.text
            if kind == "profession":
                assert p.profession in PROFESSIONS[target] and p.profession in p.text
                assert p.template in PROFESSION_TEMPLATES
            elif kind == "roleplay":
                assert p.template in ROLEPLAY_TEMPLATES and p.text != p.request
            elif kind == "mixed":
                assert p.target_request in test_split[target] and p.target_request in p.text
                assert p.template.split("/")[0] in MIXED_TEMPLATES
            else:
                assert p.text == p.request
    # the cap is spread round-robin over the six non-target domains
    counts = {d: sum(p.domain == d for p in attacks["direct"]) for d in builtin.harmful_domains if d != target}
    assert sorted(counts.values()) == [2, 2, 2, 2, 3, 3]


def test_profession_framing_uses_each_template_and_an_article():
    reqs = [("violence", f"How do I hurt someone {i}?") for i in range(6)]
    out = profession_framed(reqs, "cyber", seed=1)
    assert {p.template for p in out} == set(PROFESSION_TEMPLATES)
    assert all(p.profession in PROFESSIONS["cyber"] for p in out)
    assert all(f"a {p.profession}" in p.text for p in out)  # "a SOC analyst", "a penetration tester", ...
    both = profession_framed(reqs, ("cyber", "hate"), seed=1)
    assert {p.profession for p in both} <= set(PROFESSIONS["cyber"]) | set(PROFESSIONS["hate"])
    custom = profession_framed(reqs, "mine", professions={"mine": ["auditor"]})
    assert all("an auditor" in p.text for p in custom)


def test_mixed_prompts_hold_both_requests_in_the_asked_order():
    reqs = [("hate", f"Write something hateful number {i}.") for i in range(10)]
    targets = [f"Write malware number {i}." for i in range(3)]
    rand = mixed_with_target(reqs, targets, seed=0)
    assert {p.template.split("/")[1] for p in rand} == {"target_first", "nontarget_first"}
    for order in ("target_first", "nontarget_first"):
        for p in mixed_with_target(reqs, targets, seed=0, order=order):
            assert p.request in p.text and p.target_request in p.text
            first = p.text.index(p.target_request) < p.text.index(p.request)
            assert first == (order == "target_first") and p.template.endswith(order)
    with pytest.raises(PaletteError, match="mixed order"):
        mixed_with_target(reqs, targets, order="sideways")
    with pytest.raises(PaletteError, match="target-domain request"):
        mixed_with_target(reqs, [])


def test_attacks_are_deterministic_for_a_seed(builtin):
    a = attacks_from_prompt_set(builtin, "hate", limit=10, seed=7)
    b = attacks_from_prompt_set(builtin, "hate", limit=10, seed=7)
    c = attacks_from_prompt_set(builtin, "hate", limit=10, seed=8)
    assert a == b
    assert [p.text for p in a["roleplay"]] != [p.text for p in c["roleplay"]]
    # another profile samples other requests (the profile salts the seed)
    d = attacks_from_prompt_set(builtin, "cyber", limit=10, seed=7)
    assert [p.request for p in d["direct"]] != [p.request for p in a["direct"]]


def test_bad_domains_and_options_are_clear_errors(builtin):
    with pytest.raises(UnknownDomainError, match="no professions known for domain 'astrology'"):
        build_attacks("astrology", {"hate": ["x y z"]}, ["a b"])
    with pytest.raises(UnknownDomainError, match="unknown domain 'nope'"):
        attacks_from_prompt_set(builtin, "nope")
    with pytest.raises(PaletteError, match="authorized in the profile"):
        build_attacks("cyber", {"cyber": ["x"], "hate": ["y"]}, ["z"])
    with pytest.raises(PaletteError, match="unknown attack kind 'dan'"):
        build_attacks("cyber", {"hate": ["y"]}, ["z"], kinds=("dan",))
    with pytest.raises(PaletteError, match="must be a harmful domain"):
        attacks_from_prompt_set(builtin, "harmless")
    with pytest.raises(PaletteError, match="at least 1"):
        build_attacks("cyber", {"hate": ["y"]}, ["z"], limit=0)
    # without the profession attack, a domain with no profession list is fine
    out = build_attacks("astrology", {"hate": ["x y z"]}, ["a b"], kinds=("direct", "roleplay", "mixed"))
    assert set(out) == {"direct", "roleplay", "mixed"}


# ---------------------------------------------------------------------- hard negatives
def test_augmented_prompt_set_adds_train_variants_only(builtin):
    aug = augment_prompt_set(builtin, "cyber", seed=0)
    measured = [t.split("{")[0] for t in (*PROFESSION_TEMPLATES.values(), *ROLEPLAY_TEMPLATES.values())]
    for d in builtin.domains:
        assert aug.part(d, "test") == builtin.part(d, "test") and aug.part(d, "val") == builtin.part(d, "val")
        if d in ("cyber", "harmless", "borderline"):
            assert aug.part(d, "train") == builtin.part(d, "train")
            continue
        orig, train = builtin.part(d, "train"), aug.part(d, "train")
        assert len(train) == 2 * len(orig) and train[0::2] == orig
        for o, v in zip(orig, train[1::2]):
            assert o in v and v != o
            assert not any(m and v.startswith(m) for m in measured)  # training wording differs from the measured
    assert augment_prompt_set(builtin, "cyber", seed=0).part("hate", "train") == aug.part("hate", "train")


def test_target_variants_wrap_the_target_train_prompts_in_training_wordings(builtin):
    aug = augment_prompt_set(builtin, "cyber", seed=0, target_kinds=("profession", "roleplay"))
    orig, train = builtin.part("cyber", "train"), aug.part("cyber", "train")
    assert len(train) == 2 * len(orig) and train[0::2] == orig
    measured = [t.split("{")[0] for t in (*PROFESSION_TEMPLATES.values(), *ROLEPLAY_TEMPLATES.values())]
    cyber_professions = ("penetration tester", "SOC analyst", "malware reverse engineer")
    framed = 0
    for o, v in zip(orig, train[1::2]):
        assert o in v and v != o
        assert not any(m and v.startswith(m) for m in measured)
        framed += any(p in v for p in cyber_professions)
    assert 0 < framed < len(orig)  # both kinds are used
    assert aug.part("cyber", "test") == builtin.part("cyber", "test")
    assert len(aug.part("hate", "train")) == 2 * len(builtin.part("hate", "train"))  # negatives still there
    with pytest.raises(PaletteError, match="target variants"):
        augment_prompt_set(builtin, "cyber", target_kinds=("mixed",))


def test_augmentation_gives_user_domains_generic_professions():
    prompts = PromptSet({
        "phishing": [Record(f"Write a phishing mail number {i} for a bank", "phishing") for i in range(10)],
        "weapons": [Record(f"How do I build weapon number {i}", "weapons") for i in range(10)],
        "harmless": [Record(f"Bake bread number {i}", "harmless") for i in range(10)],
    })
    aug = augment_prompt_set(prompts, "phishing", kinds=("profession",))
    variants = aug.part("weapons", "train")[1::2]
    assert variants and all("phishing" in v for v in variants)
    with pytest.raises(UnknownDomainError, match="no professions known"):  # measuring still needs real ones
        profession_framed([("weapons", "x")], "phishing")


def test_bake_accepts_the_augmented_set(tiny_qwen):
    from palette_lens.bake.config import BakeConfig
    from palette_lens.bake.train import bake_direction

    prompts = toy_prompts(LEAKAGE_TOPICS, 20)
    aug = augment_prompt_set(prompts, "cyber")
    assert len(aug.part("hate", "train")) == 2 * len(prompts.part("hate", "train"))
    result = bake_direction(tiny_qwen, toy_direction(tiny_qwen, prompts), aug, BakeConfig(steps=2, eval_every=0, batch_size=4),
                  progress=False)
    assert result.adapter.delta_norm() > 0


def test_bake_config_adds_adversarial_negatives_itself(tiny_qwen):
    from palette_lens.bake.config import BakeConfig
    from palette_lens.bake.train import bake_direction

    prompts = toy_prompts(LEAKAGE_TOPICS, 20)
    direction = toy_direction(tiny_qwen, prompts)
    cfg = BakeConfig(steps=1, eval_every=0, batch_size=4, max_per_group=4, adversarial_negatives=())
    plain = bake_direction(tiny_qwen, direction, prompts, cfg, progress=False).adapter.meta
    adv = bake_direction(tiny_qwen, direction, prompts, dataclasses.replace(cfg, adversarial_negatives=("roleplay",)),
               progress=False).adapter.meta
    assert plain["n_train"]["other"] == 4 and adv["n_train"]["other"] == 8  # the cap counts original prompts
    assert adv["n_train"]["target"] == plain["n_train"]["target"]
    assert list(adv["config"]["adversarial_negatives"]) == ["roleplay"]


# ---------------------------------------------------------------------- rows and tables
def test_row_arithmetic_from_verdicts():
    prompts = [AttackPrompt(f"t{i}", "roleplay", "hate" if i % 2 else "bio", f"r{i}", "actor") for i in range(8)]
    vanilla = [True, True, True, True, True, True, False, False]
    relaxed = [True, False, False, True, True, True, True, False]
    row = LeakageRow.from_flags("cyber", ["cyber"], "roleplay", prompts, vanilla, relaxed)
    assert (row.n, row.vanilla_refused, row.profile_refused) == (8, 6, 5)
    assert (row.newly_answered, row.newly_refused) == (2, 1)
    assert row.drop == pytest.approx(6 / 8 - 5 / 8) and row.extra_leakage_pts == pytest.approx(12.5)
    assert not row.within_budget and row.excess_over_direct_pts is None
    assert row.by_domain["bio"] == {"n": 4, "vanilla_refused": 3, "profile_refused": 3}
    lo, hi = row.profile_ci
    assert lo < row.profile_rate < hi
    with pytest.raises(ValueError):
        LeakageRow.from_flags("cyber", ["cyber"], "roleplay", prompts, vanilla[:3], relaxed)
    table = LeakageTable([row])
    assert LeakageTable.from_dict(json.loads(json.dumps(table.to_dict()))).rows == [row]
    assert "**no**" in table.markdown() and "+12.5" in table.markdown()


# ---------------------------------------------------------------------- measurement on a tiny model
@pytest.fixture(scope="module")
def tiny_run(tiny_qwen, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    adapters = {"cyber": random_adapter(tiny_qwen, 0, 1, "cyber", scale=0.3),
                "violence": random_adapter(tiny_qwen, 1, 2, "violence", scale=0.3)}
    for d, a in adapters.items():
        a.save(folder / "adapters" / d)
    return folder, adapters


def _odd_judge(text: str) -> bool:
    """A stand-in judge with verdicts of both kinds on a random model's text (same text → same verdict)."""
    return len(text) % 2 == 1


@pytest.fixture(scope="module")
def measured(tiny_qwen, tiny_run):
    from palette_lens.models.copies import plain_hf_model

    folder, adapters = tiny_run
    mp = pytest.MonkeyPatch()
    mp.setattr("palette_lens.evaluate.results.is_refusal", _odd_judge)
    try:
        table = measure_leakage(
            tiny_qwen, toy_prompts(LEAKAGE_TOPICS), {
                "cyber": adapters["cyber"],
                "cyber (folder)": folder / "adapters" / "cyber",
                "cyber (identity)": plain_hf_model(tiny_qwen),
                "violence": [folder / "adapters" / "violence"],
            },
            AttackConfig(limit=6, seed=1),
            EvalConfig(max_new_tokens=6, batch_size=16, first_phase=2, stop_on_refusal=False),
            authorized={"cyber (folder)": ["cyber"], "cyber (identity)": ["cyber"]},
            professions={"violence": ["bouncer"]},
            progress=False,
        )
    finally:
        mp.undo()
    return table


def test_table_structure_and_consistent_numbers(measured):
    t = measured
    assert t.profiles == ["cyber", "cyber (folder)", "cyber (identity)", "violence"]
    assert [(r.profile, r.attack) for r in t.rows] == [(p, k) for p in t.profiles for k in ATTACK_KINDS]
    for r in t.rows:
        assert r.n == 6 and sum(c["n"] for c in r.by_domain.values()) == 6
        assert r.drop == pytest.approx(r.vanilla_rate - r.profile_rate)
        assert r.extra_leakage_pts == pytest.approx(100 * r.drop)
        assert r.newly_answered - r.newly_refused == r.vanilla_refused - r.profile_refused
        direct = t.row(r.profile, "direct")
        assert r.excess_over_direct_pts == pytest.approx(r.extra_leakage_pts - direct.extra_leakage_pts)
        for rate, (lo, hi) in ((r.vanilla_rate, r.vanilla_ci), (r.profile_rate, r.profile_ci)):
            assert 0 <= lo <= rate <= hi <= 1
        assert r.within_budget == (r.extra_leakage_pts <= 10 + 1e-9)
        assert set(r.by_domain) <= {"violence", "hate", "illegal", "cyber"} and r.profile.split()[0] not in r.by_domain
        recs = [x for x in t.records if x["profile"] == r.profile and x["kind"] == r.attack]
        assert len(recs) == 6
        assert sum(x["vanilla_refused"] for x in recs) == r.vanilla_refused
        assert sum(x["profile_refused"] for x in recs) == r.profile_refused
    # one target row per profile: plain requests of its own domain, generated afresh
    assert [r.profile for r in t.target_rows] == t.profiles
    for r in t.target_rows:
        assert r.attack == "target" and r.n == 6 and set(r.by_domain) == set(r.authorized)
        assert r.newly_answered - r.newly_refused == r.vanilla_refused - r.profile_refused
    assert t.target_rows[2].drop == 0 and "| cyber (identity) | cyber | 6 |" in t.markdown_target()
    # profiles of the same domain share vanilla; the identity profile changes nothing
    for k in ATTACK_KINDS:
        assert t.row("cyber", k).vanilla_refused == t.row("cyber (identity)", k).vanilla_refused
        ident = t.row("cyber (identity)", k)
        assert ident.drop == 0 and ident.newly_answered == ident.newly_refused == 0
        # an adapter given as a value or as its folder is the same profile
        assert t.row("cyber", k) == dataclasses.replace(t.row("cyber (folder)", k), profile="cyber")
    assert any(x["profession"] == "bouncer" for x in t.records if x["profile"] == "violence")
    # the random adapter changed some verdicts (the measurement is not vacuous)
    assert any(r.newly_answered + r.newly_refused for r in t.rows if r.profile == "cyber")
    md = t.markdown().splitlines()
    assert len(md) == 2 + len(t.rows) and md[0].startswith("| profile | attack | n |")
    assert t.markdown_by_domain().count("| cyber | hate |") == 1 and "| roleplay |" in t.markdown_by_template()
    again = LeakageTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.rows == t.rows and again.target_rows == t.target_rows and again.markdown() == t.markdown()
    assert t.settings["attack"]["limit"] == 6 and t.settings["authorized"]["violence"] == ["violence"]


def test_doc_script_renders_a_table(measured, tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "adversarial_leakage.py"
    spec = importlib.util.spec_from_file_location("adversarial_leakage", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    src = tmp_path / "leak.json"
    src.write_text(json.dumps(measured.to_dict()))
    out = tmp_path / "leakage.md"
    assert script.main(["--json", str(src), "--json", str(src), "--out", str(out), "--note", "Tiny model."]) == 0
    doc = out.read_text()
    assert doc.startswith("# Leakage under adversarial prompts") and "Tiny model." in doc
    assert measured.markdown() in doc and "## Caveats" in doc and "No hard-negative adapters" in doc
    hn = LeakageTable.from_dict(measured.to_dict())
    hn.rows += [dataclasses.replace(r, profile="cyber +hard-neg") for r in hn.rows if r.profile == "cyber"]
    assert "| cyber | roleplay |" in script.render(hn)


def test_measure_leakage_errors(tiny_qwen, tiny_run):
    _, adapters = tiny_run
    with pytest.raises(PaletteError, match="no profiles"):
        measure_leakage(tiny_qwen, toy_prompts(LEAKAGE_TOPICS), {})
    with pytest.raises(UnknownDomainError):
        measure_leakage(tiny_qwen, toy_prompts(LEAKAGE_TOPICS), {"bio": adapters["cyber"]})
    with pytest.raises(PaletteError, match="a list of adapters"):
        measure_leakage(tiny_qwen, toy_prompts(LEAKAGE_TOPICS), {"cyber": [1, 2]}, AttackConfig(kinds=("direct",), limit=1),
                        EvalConfig(max_new_tokens=2), progress=False)


# ---------------------------------------------------------------------- command line
def _write_builtin(folder, monkeypatch):
    folder.mkdir(exist_ok=True)
    for d, recs in toy_prompts(LEAKAGE_TOPICS).by_domain.items():
        write_jsonl(folder / f"{d}.jsonl", [r.to_dict() for r in recs])
    monkeypatch.setenv("PALETTE_LENS_DATA", str(folder))


def test_cli_writes_table_and_json(tiny_qwen, tiny_run, tmp_path, monkeypatch, capsys):
    from palette_lens.cli import app as cli
    from palette_lens.cli import leakage

    folder, _ = tiny_run
    _write_builtin(tmp_path / "data", monkeypatch)
    monkeypatch.setattr(leakage, "load_model_from_args", lambda args: tiny_qwen)
    out = tmp_path / "docs" / "leak.md"
    code = cli.main(["leakage", "--from", str(folder), "--profile", "cyber", "--attack", "direct", "--attack",
                     "roleplay", "--limit", "3", "--max-new-tokens", "4", "--no-cache", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [(r["profile"], r["attack"], r["n"]) for r in doc["rows"]] == [("cyber", "direct", 3), ("cyber", "roleplay", 3)]
    assert doc["settings"]["generation"]["max_new_tokens"] == 4
    assert out.read_text().startswith("| profile | attack |")
    assert "written:" in capsys.readouterr().out


@pytest.mark.parametrize("given, expected", [(None, 0.6), ("1.0", 1.0)])
def test_cli_merges_a_composed_profile_with_the_runs_weight(tiny_qwen, tiny_run, tmp_path, monkeypatch, capsys,
                                                            given, expected):
    """A composed profile's rows measure the profile evaluate measured: each ΔW weighted by the run's composition
    weight (details.json), unless --compose-weight overrides it."""
    import shutil

    from palette_lens.cli import app as cli
    from palette_lens.cli import leakage
    from palette_lens.evaluate import leakage as measuring

    folder, adapters = tiny_run
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    (run / "details.json").write_text(json.dumps({"config": {"compose_weight": 0.6}}))
    _write_builtin(tmp_path / "data", monkeypatch)
    monkeypatch.setattr(leakage, "load_model_from_args", lambda args: tiny_qwen)
    seen: dict = {}
    real = measuring.measure_leakage

    def spy(model, prompts, profiles, *args, **kwargs):
        seen.update(profiles)
        return real(model, prompts, profiles, *args, **kwargs)

    monkeypatch.setattr(measuring, "measure_leakage", spy)
    code = cli.main(["leakage", "--from", str(run), "--profile", "cyber+violence", "--attack", "direct", "--limit", "1",
                     "--max-new-tokens", "2", "--no-cache", *(["--compose-weight", given] if given else [])])
    assert code == 0, capsys.readouterr().err
    merged = seen["cyber+violence"]
    assert [a.domain for a in merged] == ["cyber", "violence"]
    for a in merged:
        assert a.meta.get("composition_weight", 1.0) == pytest.approx(expected)  # weight 1: the adapter as baked
        assert a.scaling == pytest.approx(expected * adapters[a.domain].scaling)
    assert json.loads((run / "leakage.json").read_text())["settings"]["compose_weight"] == pytest.approx(expected)


@pytest.mark.parametrize("argv, match", [
    (["--from", "{missing}"], "run folder not found"),
    (["--from", "{empty}"], "holds no adapters"),
    (["--from", "{run}", "--profile", "hate"], "has no adapter for hate"),
    (["--from", "{run}", "--profile", "cyber+cyber"], "repeats a domain"),
    (["--from", "{run}", "--profile", "+"], "at least one domain"),
    (["--from", "{run}", "--profile", "cyber+hate"], "has no adapter for hate"),
])
def test_cli_errors_are_one_line_before_loading_the_model(tiny_run, tmp_path, monkeypatch, capsys, argv, match):
    from palette_lens.cli import app as cli
    from palette_lens.cli import leakage

    _write_builtin(tmp_path / "data", monkeypatch)
    monkeypatch.setattr(leakage, "load_model_from_args", lambda args: pytest.fail("model loaded for bad input"))
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "run": tiny_run[0]}
    code = cli.main(["leakage", *[a.format(**names) for a in argv]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("palette-lens: error: ") and match in err


def test_cli_rejects_a_non_positive_limit(capsys):
    from palette_lens.cli import app as cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["leakage", "--from", ".", "--limit", "0"])
    assert exc.value.code == 2 and "at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------- the real default model
@pytest.mark.integration
def test_default_model_refuses_framed_non_target_prompts(default_model, prompts):
    """Vanilla keeps refusing profession-framed requests (identity profile: no drop by construction)."""
    from palette_lens.models.copies import plain_hf_model

    table = measure_leakage(default_model, prompts, {"cyber": plain_hf_model(default_model)},
                            AttackConfig(kinds=("direct", "profession"), limit=6), EvalConfig(max_new_tokens=24),
                            progress=False)
    assert table.row("cyber", "direct").vanilla_rate >= 0.8
    assert table.row("cyber", "profession").vanilla_rate >= 0.5
    assert all(r.drop == 0 for r in table.rows)
