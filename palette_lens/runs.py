"""Run folders: read the directions and adapters that ``palette-lens demo`` / ``run`` wrote, or make a small
one (search + bake per target domain) when there is none.

Layout (the same as the pipeline's)::

    RUN/directions/<domain>.safetensors, <domain>.json   the chosen refusal directions
    RUN/search/<domain>.json                             the search results (objectives, Pareto front)
    RUN/adapters/<domain>/                               PEFT adapter folders (+ palette_meta.json, bake.json)

:func:`make_run` writes that layout with settings meant for minutes, not hours (:data:`SMALL_SEARCH`,
:data:`SMALL_BAKE`): notebooks and tests use it to get adapters quickly; ``palette-lens run`` is the way to
make good ones.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .adapters import META_FILE, BakedAdapter, load_adapter
from .atomic import atomic_write_text
from .data import HARMLESS, PromptSet
from .directions import Direction
from .errors import PaletteError
from .models import ChatModel

log = logging.getLogger(__name__)

#: Search settings of :func:`make_run` (few prompts, few candidates scored causally).
SMALL_SEARCH: dict[str, Any] = {"n_train": 8, "top_k": 4, "n_val": 6, "n_val_other": 1, "n_proxy": 4}
#: Bake settings of :func:`make_run` (overrides of :class:`palette_lens.bake.BakeConfig`).
SMALL_BAKE: dict[str, Any] = {"steps": 40, "max_per_group": 24, "val_per_domain": 3, "eval_every": 10}


@dataclass
class RunArtifacts:
    """Directions and adapters of a run folder.

    Attributes:
        folder: the run folder (None when nothing was written).
        directions: domain → chosen refusal direction.
        adapters: domain → baked adapter.
        made: True when :func:`make_run` produced them in this session, False when they were read.
        timings_s: seconds per stage (when made).
    """

    folder: Path | None
    directions: dict[str, Direction]
    adapters: dict[str, BakedAdapter]
    made: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(self.adapters)


def run_domains(folder: str | Path) -> list[str]:
    """Domains with an adapter folder in ``folder/adapters`` (sorted); [] when there is none."""
    root = Path(folder) / "adapters"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / META_FILE).is_file())


def load_run(
    folder: str | Path, model: ChatModel | None = None, domains: Sequence[str] | None = None
) -> RunArtifacts:
    """Read the adapters (and directions) of a run folder.

    Args:
        folder: a folder written by ``palette-lens demo`` / ``run`` or :func:`make_run`.
        model: when given, every adapter and direction is checked against it (raises
            :class:`palette_lens.errors.AdapterMismatchError` for another model).
        domains: the domains to read (default: every adapter in the folder).

    Raises:
        PaletteError: no adapters in the folder, or a requested domain is missing.
    """
    folder = Path(folder).expanduser()
    have = run_domains(folder)
    if not have:
        raise PaletteError(f"{folder} holds no adapters (expected {folder}/adapters/<domain>/)")
    wanted = list(domains) if domains is not None else have
    missing = [d for d in wanted if d not in have]
    if missing:
        raise PaletteError(f"{folder} has no adapter for {', '.join(missing)}; it has {', '.join(have)}")
    adapters: dict[str, BakedAdapter] = {}
    directions: dict[str, Direction] = {}
    for d in wanted:
        adapters[d] = load_adapter(folder / "adapters" / d, model)
        path = folder / "directions" / f"{d}.json"
        if path.is_file():
            directions[d] = Direction.load(path)
        elif adapters[d].direction is not None:
            a = adapters[d]
            directions[d] = Direction(a.direction, a.layer, int(a.meta.get("position", -1)), d,
                                      str(a.meta.get("base_fingerprint", "")))
        if d in directions and model is not None:
            directions[d].check_model(model.fingerprint)
    log.info("read adapters %s from %s", ", ".join(wanted), folder)
    return RunArtifacts(folder, directions, adapters, made=False)


def make_run(
    model: ChatModel,
    prompts: PromptSet,
    out: str | Path,
    targets: Sequence[str],
    *,
    search: Mapping[str, Any] | None = None,
    bake: Mapping[str, Any] | None = None,
    residual_cache: bool | str = False,
    progress: bool = True,
) -> RunArtifacts:
    """Search a direction and bake an adapter for each target, writing the run-folder layout into ``out``.

    Residuals of every domain are collected once and shared by the searches.

    Args:
        model: the base chat model (never modified).
        prompts: the prompt set (its harmful domains are the non-target domains of the searches and bakes;
            load fewer domains to make it faster).
        out: the run folder to write.
        targets: the domains to bake.
        search: overrides of :class:`palette_lens.search.SearchConfig` (default :data:`SMALL_SEARCH`).
        bake: overrides of :class:`palette_lens.bake.BakeConfig` (default :data:`SMALL_BAKE`).
        residual_cache: passed to :func:`palette_lens.candidates.collect_domain_residuals` (True: the user
            cache, so later identical collections are read from disk).
        progress: progress bars.
    """
    from .bake import BakeConfig
    from .bake import bake as bake_direction
    from .candidates import collect_domain_residuals
    from .search import SearchConfig, search_direction

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    scfg = replace(SearchConfig(), **{**SMALL_SEARCH, **(search or {})})
    bcfg = replace(BakeConfig(), **{**SMALL_BAKE, **(bake or {})})
    for t in targets:
        prompts.check_domain(t)
        if t not in prompts.harmful_domains:
            raise PaletteError(f"target {t!r} is not a harmful domain")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    residuals = collect_domain_residuals(
        model, prompts, [*prompts.harmful_domains, HARMLESS], limit=scfg.n_train, cache=residual_cache
    )
    timings["residuals"] = time.perf_counter() - t0
    directions: dict[str, Direction] = {}
    adapters: dict[str, BakedAdapter] = {}
    for t in targets:
        t0 = time.perf_counter()
        result = search_direction(model, prompts, t, residuals=residuals, config=scfg, progress=progress)
        directions[t] = result.chosen
        result.chosen.save(out / "directions", t)
        atomic_write_text(out / "search" / f"{t}.json", json.dumps(result.to_json(), indent=1))
        timings[f"search:{t}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        baked = bake_direction(model, result.chosen, prompts, bcfg, progress=progress)
        adapters[t] = baked.adapter
        folder = baked.adapter.save(out / "adapters" / t)
        atomic_write_text(folder / "bake.json", json.dumps(
            {"timings_s": baked.timings_s, "val": baked.val, "baseline_val": baked.baseline_val,
             "history": baked.history}, indent=1, default=str))
        timings[f"bake:{t}"] = time.perf_counter() - t0
    atomic_write_text(out / "run.json", json.dumps({
        "made_by": "palette_lens.runs.make_run", "model": model.name, "fingerprint": model.fingerprint,
        "targets": list(targets), "domains": prompts.domains, "search": scfg.to_dict(), "bake": bcfg.to_dict(),
        "timings_s": timings,
    }, indent=1))
    log.info("made run %s (%s) in %.0f s", out, ", ".join(targets), sum(timings.values()))
    return RunArtifacts(out, directions, adapters, made=True, timings_s=timings)


def load_or_make_run(
    run_dir: str | Path | None,
    model: ChatModel,
    prompts: PromptSet,
    targets: Sequence[str],
    out: str | Path | None = None,
    **make_options: Any,
) -> RunArtifacts:
    """Read ``run_dir`` when it is given (non-empty), otherwise :func:`make_run` the ``targets``.

    Args:
        run_dir: a run folder, or None / "" to bake here.
        model: the base chat model.
        prompts: the prompt set (used only when baking).
        targets: domains needed; read from ``run_dir`` (all of its adapters when empty) or baked.
        out: where to write when baking (default: a new temporary folder).
        make_options: passed to :func:`make_run` (``search``, ``bake``, ``residual_cache``, ``progress``).
    """
    if run_dir:
        return load_run(run_dir, model, list(targets) or None)
    if not targets:
        raise PaletteError("no run folder given and no target domains to bake")
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="palette-run-"))
    return make_run(model, prompts, folder, targets, **make_options)
