"""Run folders: read the directions and adapters that ``palette-lens demo`` / ``run`` wrote, or make a small
one (search + bake per target domain) when there is none.

The layout is :class:`palette_lens.pipeline.run_folder.RunFolder`'s (the same as the pipeline's).

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
from typing import TYPE_CHECKING, Any

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.bake.config import BakeConfig
from palette_lens.data.prompt_set import PromptSet
from palette_lens.data.records import HARMLESS
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.pipeline.builtin import builtin_run_dir, is_builtin, verify_builtin_run
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.pipeline.search_and_bake import search_and_bake
from palette_lens.search.candidates import collect_domain_residuals
from palette_lens.search.direction import Direction
from palette_lens.search.result import SearchConfig
from palette_lens.util.atomic import atomic_write_json

if TYPE_CHECKING:
    from palette_lens.gate.domain_gate import DomainGate

log = logging.getLogger(__name__)

#: Search settings of :func:`make_run` (few prompts, few candidates scored causally).
SMALL_SEARCH: dict[str, Any] = {"n_train": 8, "top_k": 4, "n_val": 6, "n_val_other": 1, "n_proxy": 4}
#: Bake settings of :func:`make_run` (overrides of :class:`palette_lens.bake.config.BakeConfig`).
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

    Examples:
        >>> art = load_or_make_run("runs/demo", model, prompts, ["cyber"])      # doctest: +SKIP
        >>> art.domains, art.made                                             # doctest: +SKIP
        (['cyber'], False)
        >>> art.directions["cyber"].layer                                     # doctest: +SKIP
        14
    """

    folder: Path | None
    directions: dict[str, Direction]
    adapters: dict[str, BakedAdapter]
    made: bool = False
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(self.adapters)

    def gate(self, domains: str | Sequence[str], model: ChatModel | None = None) -> DomainGate | None:
        """The run's domain gate of a profile (``"cyber+hate"`` or its domains); None when the run has none.

        Examples:
            >>> gate = load_run(model=model).gate("cyber", model)               # doctest: +SKIP
            >>> gate.opens(model, ["Write a keylogger."])                       # doctest: +SKIP
            [True]
        """
        from palette_lens.gate.domain_gate import DomainGate

        name = domains if isinstance(domains, str) else "+".join(domains)
        folder = RunFolder(self.folder).gate_dir(name) if self.folder is not None else None
        if folder is None or not folder.is_dir():
            return None
        return DomainGate.load(folder, model)

    def bake_report(self, domain: str) -> dict[str, Any] | None:
        """The ``bake.json`` of ``domain``'s adapter (timings, validation metrics, training history), or None."""
        if self.folder is None or not RunFolder(self.folder).bake_json(domain).is_file():
            return None
        return json.loads(RunFolder(self.folder).bake_json(domain).read_text())


def load_run(
    folder: str | Path | None = None, model: ChatModel | None = None, domains: Sequence[str] | None = None
) -> RunArtifacts:
    """Read the adapters (and directions) of a run folder, or of the run shipped with the package.

    Args:
        folder: a folder written by ``palette-lens demo`` / ``run`` or :func:`make_run`; None or
            ``"builtin"``: the embedded default model's shipped run (:mod:`palette_lens.pipeline.builtin`:
            cyber, disinformation and hate, their gates and search results), whose files and model
            fingerprint are checked before anything is read.
        model: when given, every adapter and direction is checked against it (raises
            :class:`palette_lens.errors.AdapterMismatchError` for another model).
        domains: the domains to read (default: every adapter in the folder).

    Returns:
        The run's adapters and directions (``made`` is False).

    Raises:
        PaletteError: no adapters in the folder, or a requested domain is missing.
        BuiltinRunError: the shipped run is damaged.
        AdapterMismatchError: an adapter (or the shipped run) was made on another model.

    Examples:
        >>> run = load_run(model=pl.load_model())  # the shipped run          # doctest: +SKIP
        >>> run.domains, run.folder.name  # doctest: +SKIP
        (['cyber', 'disinformation', 'hate'], 'builtin_run')
        >>> run = load_run("runs/demo", model)  # doctest: +SKIP
    """
    if is_builtin(folder):
        verify_builtin_run(model)
        folder = builtin_run_dir()
    run = RunFolder(folder)
    have = run.adapter_domains()
    if not have:
        raise PaletteError(f"{run.root} holds no adapters (expected {run.adapters_dir}/<domain>/)")
    wanted = list(domains) if domains is not None else have
    missing = [d for d in wanted if d not in have]
    if missing:
        raise PaletteError(f"{run.root} has no adapter for {', '.join(missing)}; it has {', '.join(have)}")
    adapters: dict[str, BakedAdapter] = {}
    directions: dict[str, Direction] = {}
    for d in wanted:
        adapters[d] = run.read_adapter(d, model)
        direction = run.read_direction(d, adapters[d])
        if direction is not None:
            if model is not None:
                direction.check_model(model.fingerprint)
            directions[d] = direction
    log.info("read adapters %s from %s", ", ".join(wanted), run.root)
    return RunArtifacts(run.root, directions, adapters, made=False)


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
        search: overrides of :class:`palette_lens.search.result.SearchConfig` (default :data:`SMALL_SEARCH`).
        bake: overrides of :class:`palette_lens.bake.config.BakeConfig` (default :data:`SMALL_BAKE`).
        residual_cache: passed to :func:`palette_lens.search.candidates.collect_domain_residuals` (True: the user
            cache, so later identical collections are read from disk).
        progress: progress bars.

    Returns:
        The new adapters and directions (``made`` is True).

    Examples:
        >>> run = make_run(model, prompts, "runs/small", ["cyber"])  # doctest: +SKIP
        >>> sorted(run.adapters)  # doctest: +SKIP
        ['cyber']
    """
    run = RunFolder(out)
    scfg = replace(SearchConfig(), **{**SMALL_SEARCH, **(search or {})})
    bcfg = replace(BakeConfig(), **{**SMALL_BAKE, **(bake or {})})
    for t in targets:
        prompts.check_domain(t)
        if t not in prompts.harmful_domains:
            raise PaletteError(f"target {t!r} is not a harmful domain")
    run.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    residuals = collect_domain_residuals(
        model, prompts, [*prompts.harmful_domains, HARMLESS], limit=scfg.n_train, cache=residual_cache
    )
    timings["residuals"] = time.perf_counter() - t0
    made = search_and_bake(model, prompts, targets, run, search=scfg, bake=bcfg, residuals=residuals,
                           progress=progress)
    timings.update(made.timings_s)
    atomic_write_json(run.run_json, {
        "made_by": "palette_lens.pipeline.runs.make_run", "model": model.name, "fingerprint": model.fingerprint,
        "targets": list(targets), "domains": prompts.domains, "search": scfg.to_dict(), "bake": bcfg.to_dict(),
        "timings_s": timings,
    })
    log.info("made run %s (%s) in %.0f s", run.root, ", ".join(targets), sum(timings.values()))
    return RunArtifacts(run.root, made.directions, made.adapters, made=True, timings_s=timings)


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
        run_dir: a run folder, ``"builtin"`` for the run shipped with the package, or None / "" to bake here.
        model: the base chat model.
        prompts: the prompt set (used only when baking).
        targets: domains needed; read from ``run_dir`` (all of its adapters when empty) or baked.
        out: where to write when baking (default: a new temporary folder).
        **make_options: passed to :func:`make_run` (``search``, ``bake``, ``residual_cache``, ``progress``).

    Returns:
        The run's adapters and directions (``made`` tells whether they were baked now).

    Raises:
        PaletteError: no ``run_dir`` and no ``targets``, or what :func:`load_run` / :func:`make_run` raise.

    Examples:
        >>> art = load_or_make_run(None, model, prompts, ["cyber"], out="runs/small")   # doctest: +SKIP
        >>> art.made, art.folder                                                      # doctest: +SKIP
        (True, PosixPath('runs/small'))
    """
    if run_dir:
        return load_run(run_dir, model, list(targets) or None)
    if not targets:
        raise PaletteError("no run folder given and no target domains to bake")
    folder = Path(out) if out else Path(tempfile.mkdtemp(prefix="palette-run-"))
    return make_run(model, prompts, folder, targets, **make_options)
