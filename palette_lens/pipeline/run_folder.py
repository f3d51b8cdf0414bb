"""The layout of a run folder, in one place: :class:`RunFolder`.

Every command and function that writes or reads a run goes through it::

    RUN/directions/<domain>.safetensors, <domain>.json   the chosen refusal directions
    RUN/search/<domain>.json                             the search results (objectives, Pareto front)
    RUN/adapters/<domain>/                               PEFT adapter folders (+ palette_meta.json, bake.json)
    RUN/gates/<profile>/                                 domain gates of gated profiles
    RUN/baseline.json, baseline.md                       vanilla refusal per domain
    RUN/details.json, report.html, metrics.json          the summary, written last in this order
    RUN/run.json                                         what :func:`palette_lens.pipeline.runs.make_run` did
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palette_lens.errors import PaletteError
from palette_lens.util.atomic import atomic_write_json

if TYPE_CHECKING:  # the layout itself needs no torch; reading and writing adapters does
    from palette_lens.adapters.baked import BakedAdapter
    from palette_lens.models.chat_model import ChatModel
    from palette_lens.search.direction import Direction
    from palette_lens.search.result import SearchResult

#: The file in an adapter folder that marks it complete (``palette_lens.adapters.baked.META_FILE``).
ADAPTER_META_FILE = "palette_meta.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths and readers/writers of one run folder (nothing is created until something is written).

    Attributes:
        root: the run folder (``~`` expanded); the constructor takes a ``str`` or a :class:`~pathlib.Path`.

    Examples:
        >>> run = RunFolder("runs/demo")
        >>> run.adapter_dir("cyber")
        PosixPath('runs/demo/adapters/cyber')
    """

    root: Path

    #: Written last, in this order; a folder holding metrics.json is a finished run (a rerun starts clean).
    SUMMARY_FILES = ("details.json", "report.html", "metrics.json")

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    # ------------------------------------------------------------------ paths
    @property
    def directions_dir(self) -> Path:
        return self.root / "directions"

    def direction_json(self, domain: str) -> Path:
        return self.directions_dir / f"{domain}.json"

    def search_json(self, domain: str) -> Path:
        return self.root / "search" / f"{domain}.json"

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    def adapter_dir(self, domain: str) -> Path:
        return self.adapters_dir / domain

    def bake_json(self, domain: str) -> Path:
        return self.adapter_dir(domain) / "bake.json"

    def gate_dir(self, profile: str) -> Path:
        return self.root / "gates" / profile

    @property
    def baseline_json(self) -> Path:
        return self.root / "baseline.json"

    @property
    def baseline_md(self) -> Path:
        return self.root / "baseline.md"

    @property
    def details_json(self) -> Path:
        return self.root / "details.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    # ------------------------------------------------------------------ reading
    def adapter_domains(self) -> list[str]:
        """Domains with an adapter folder (sorted); [] when there is none."""
        if not self.adapters_dir.is_dir():
            return []
        return sorted(p.name for p in self.adapters_dir.iterdir() if (p / ADAPTER_META_FILE).is_file())

    def read_adapter(self, domain: str, model: ChatModel | None = None) -> BakedAdapter:
        """The adapter of ``domain``, checked against ``model`` when given."""
        from palette_lens.adapters.baked import load_adapter

        return load_adapter(self.adapter_dir(domain), model)

    def read_direction(self, domain: str, adapter: BakedAdapter | None = None) -> Direction | None:
        """The chosen direction of ``domain``: its JSON file, else the one the adapter carries, else None."""
        from palette_lens.search.direction import Direction

        if self.direction_json(domain).is_file():
            return Direction.load(self.direction_json(domain))
        if adapter is not None and adapter.direction is not None:
            return direction_of(adapter)
        return None

    #: What a palette-lens command writes at the top of an output folder (any one marks the folder as one).
    OUTPUT_MARKERS = ("metrics.json", "details.json", "report.html", "run.json", "baseline.json", "baseline.md",
                      "search.json", "search", "adapters", "directions", "gates", "leakage.md", "leakage.json")

    def is_output(self) -> bool:
        """Whether the folder holds a palette-lens output (a marker file or folder, or a ``profile-*.json``)."""
        if not self.root.is_dir():
            return False
        return any((self.root / name).exists() for name in self.OUTPUT_MARKERS) or any(
            self.root.glob("profile-*.json"))

    # ------------------------------------------------------------------ writing
    def clear_summary(self) -> None:
        """Remove a previous run's summary files (they must not describe this run's partial outputs)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for name in self.SUMMARY_FILES:
            (self.root / name).unlink(missing_ok=True)

    def write_search(self, result: SearchResult) -> dict:
        """Write the chosen direction and the search result of ``result.target``; returns the result's JSON."""
        result.chosen.save(self.directions_dir, result.target)
        doc = result.to_json()
        atomic_write_json(self.search_json(result.target), doc)
        return doc

    def write_adapter(self, domain: str, adapter: BakedAdapter, bake_report: dict[str, Any]) -> Path:
        """Write the adapter folder of ``domain`` and its ``bake.json``; returns the folder."""
        folder = adapter.save(self.adapter_dir(domain))
        atomic_write_json(self.bake_json(domain), bake_report)
        return folder


def direction_of(adapter: BakedAdapter) -> Direction:
    """The direction an adapter was baked from (stored in its metadata).

    Raises:
        PaletteError: the adapter carries no direction.
    """
    from palette_lens.search.direction import Direction

    if adapter.direction is None:
        raise PaletteError(f"adapter {adapter.domain!r} carries no direction; the baselines need one")
    return Direction(adapter.direction, adapter.layer, int(adapter.meta.get("position", -1)), adapter.domain,
                     str(adapter.meta.get("base_fingerprint", "")))
