"""Search a refusal direction and bake it into an adapter for each target, writing a run folder.

The one implementation behind :func:`palette_lens.pipeline.run.run_pipeline`,
:func:`palette_lens.pipeline.runs.make_run` and ``palette-lens bake``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from palette_lens.adapters.baked import BakedAdapter
from palette_lens.bake.config import BakeConfig
from palette_lens.bake.train import BakeResult, bake_direction
from palette_lens.data.prompt_set import PromptSet
from palette_lens.errors import PaletteError
from palette_lens.models.chat_model import ChatModel
from palette_lens.models.residuals import Residuals
from palette_lens.pipeline.run_folder import RunFolder
from palette_lens.search.direction import Direction
from palette_lens.search.direction_search import search_direction
from palette_lens.search.result import SearchConfig

log = logging.getLogger(__name__)

Stage = Callable[[str], AbstractContextManager[Any]]


@dataclass
class SearchAndBake:
    """What :func:`search_and_bake` returns.

    Attributes:
        directions: target → chosen (or given) refusal direction.
        adapters: target → baked adapter.
        results: target → the bake's full result (history, validation metrics, cached inputs).
        searches: target → summary of its search (``chosen``, ``fallback``, ``timings_s``); searched targets only.
        bakes: target → summary of its bake (``timings_s``, ``val``).
        timings_s: seconds per step (``search:<target>``, ``bake:<target>``).
    """

    directions: dict[str, Direction] = field(default_factory=dict)
    adapters: dict[str, BakedAdapter] = field(default_factory=dict)
    results: dict[str, BakeResult] = field(default_factory=dict, repr=False)
    searches: dict[str, dict] = field(default_factory=dict)
    bakes: dict[str, dict] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)


@contextmanager
def _no_stage(name: str) -> Iterator[None]:
    yield


def bake_report(result: BakeResult) -> dict[str, Any]:
    """The ``bake.json`` written beside an adapter: timings, validation metrics and training history."""
    return {"timings_s": result.timings_s, "val": result.val, "baseline_val": result.baseline_val,
            "history": result.history}


def search_and_bake(
    model: ChatModel,
    prompts: PromptSet,
    targets: Sequence[str],
    run: RunFolder,
    *,
    search: SearchConfig = SearchConfig(),
    bake: BakeConfig = BakeConfig(),
    residuals: Mapping[str, Residuals] | None = None,
    directions: Mapping[str, Direction] | None = None,
    stage: Stage = _no_stage,
    progress: bool = True,
) -> SearchAndBake:
    """Search every target's direction (unless given), then bake each into a single-block adapter.

    Directions, search results, adapters and their ``bake.json`` are written into ``run`` as they are made.
    Bakes at the same block share one capture of the block's inputs.

    Args:
        model: the base chat model (never modified).
        prompts: the prompt set; its other harmful domains are what the directions must keep refusing.
        targets: harmful domains to bake.
        run: the run folder to write.
        search: search settings.
        bake: bake settings.
        residuals: per-domain train residuals to share between searches (collected by each search otherwise).
        directions: directions to bake as given (no search for those targets).
        stage: a context-manager factory wrapped around the "search" and "bake" steps (the pipeline's timer).
        progress: progress bars.

    Returns:
        The directions, adapters and summaries per target.

    Examples:
        >>> made = search_and_bake(model, prompts, ["cyber"], RunFolder("runs/mine"))  # doctest: +SKIP
        >>> made.adapters["cyber"].layer_index  # doctest: +SKIP
        17
    """
    for t in targets:
        prompts.check_domain(t)
        if t not in prompts.harmful_domains:
            raise PaletteError(f"target {t!r} is not a harmful domain")
    made = SearchAndBake(directions=dict(directions or {}))
    to_search = [t for t in targets if t not in made.directions]
    if to_search:
        with stage("search"):
            for t in to_search:
                t0 = time.perf_counter()
                result = search_direction(model, prompts, t, residuals=residuals, config=search, progress=progress)
                made.directions[t] = result.chosen
                doc = run.write_search(result)
                made.searches[t] = {"chosen": doc["chosen"], "fallback": doc["fallback"],
                                    "timings_s": doc["timings_s"]}
                made.timings_s[f"search:{t}"] = time.perf_counter() - t0
    with stage("bake"):
        captured: dict[int, Any] = {}  # block → cached inputs, shared by bakes at the same block
        for t in targets:
            t0 = time.perf_counter()
            block = made.directions[t].layer - 1
            result = bake_direction(model, made.directions[t], prompts, bake, inputs=captured.get(block),
                                    progress=progress)
            captured[block] = result.inputs
            made.adapters[t] = result.adapter
            made.results[t] = result
            run.write_adapter(t, result.adapter, bake_report(result))
            made.bakes[t] = {"timings_s": result.timings_s, "val": result.val}
            made.timings_s[f"bake:{t}"] = time.perf_counter() - t0
    log.info("searched and baked %s into %s", ", ".join(targets), run.root)
    return made
