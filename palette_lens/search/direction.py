"""A refusal direction as a value: vector plus provenance, with algebra and safetensors + JSON storage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from palette_lens.errors import AdapterMismatchError, PaletteError
from palette_lens.util.atomic import atomic_write, atomic_write_text
from palette_lens.util.hashing import file_sha256


@dataclass(frozen=True)
class Direction:
    """A direction in the residual stream of one model.

    Attributes:
        vector: [d_model] raw difference of means (not normalised); see :attr:`unit`.
        layer: layer l whose ``resid_pre`` it was read at.
        position: negative post-instruction offset it was read at.
        domain: target domain (the "authorized" one).
        model_fingerprint: :attr:`ChatModel.fingerprint` of the model it belongs to.
        data_hash: hash of the prompts it was computed from.
        meta: free-form extra provenance (JSON-serialisable).

    ``+``, ``-`` and ``*`` (by a number) return new directions that keep the left operand's provenance.
    :meth:`save` writes ``<name>.safetensors`` plus ``<name>.json``; :meth:`load` reads them back and raises
    :class:`~palette_lens.errors.PaletteError` on missing, torn or corrupt files.

    Examples:
        >>> d = Direction(torch.tensor([3.0, 4.0]), layer=12, position=-1, domain="cyber")
        >>> d.norm, d.unit
        (5.0, tensor([0.6000, 0.8000]))
        >>> (2 * d).norm, (d - d).norm
        (10.0, 0.0)
    """

    vector: torch.Tensor
    layer: int
    position: int
    domain: str
    model_fingerprint: str = ""
    data_hash: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def unit(self) -> torch.Tensor:
        """r̂ = r / ‖r‖: [d_model] float32."""
        v = self.vector.to(torch.float32)
        return v / v.norm().clamp_min(1e-12)

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    # algebra (returns new Directions that keep the provenance of the left operand)
    def __add__(self, other: Direction) -> Direction:
        return replace(self, vector=self.vector + other.vector, meta={**self.meta, "combined": True})

    def __neg__(self) -> Direction:
        return replace(self, vector=-self.vector)

    def __sub__(self, other: Direction) -> Direction:
        return self + (-other)

    def __mul__(self, k: float) -> Direction:
        return replace(self, vector=self.vector * k)

    __rmul__ = __mul__

    def provenance(self) -> dict:
        d = asdict(self)
        d.pop("vector")
        d["norm"] = self.norm
        d["d_model"] = int(self.vector.shape[-1])
        return d

    def check_model(self, fingerprint: str) -> None:
        """Raise when this direction was made for another model."""
        if self.model_fingerprint and fingerprint and self.model_fingerprint != fingerprint:
            raise AdapterMismatchError(
                f"direction for {self.domain!r} was computed on model {self.model_fingerprint}, "
                f"not on the loaded model {fingerprint}"
            )

    def save(self, folder: str | Path, name: str | None = None) -> Path:
        """Write ``<name>.safetensors`` and ``<name>.json`` into ``folder`` atomically; returns the JSON path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        name = name or self.domain
        tensor_path = atomic_write(
            folder / f"{name}.safetensors", lambda p: save_file({"vector": self.vector.contiguous()}, p)
        )
        # the JSON is written last and names the vector file's hash: a pair torn by a crash is detected on load
        doc = {**self.provenance(), "vector_sha256": file_sha256(tensor_path)}
        atomic_write_text(folder / f"{name}.json", json.dumps(doc, indent=1))
        return folder / f"{name}.json"

    @classmethod
    def load(cls, path: str | Path) -> Direction:
        """Load from ``X.json`` / ``X.safetensors`` (either path, or the stem)."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
        meta_path, tensor_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        if not meta_path.is_file() or not tensor_path.is_file():
            raise PaletteError(f"direction files not found: {meta_path} / {tensor_path}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            vector = load_file(str(tensor_path))["vector"]
            direction = cls(
                vector=vector,
                layer=int(meta["layer"]),
                position=int(meta["position"]),
                domain=str(meta["domain"]),
                model_fingerprint=str(meta.get("model_fingerprint", "")),
                data_hash=str(meta.get("data_hash", "")),
                meta=dict(meta.get("meta", {})),
            )
        except Exception as exc:  # noqa: BLE001 - any read failure means damaged files
            reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PaletteError(f"direction {stem} is corrupt or incomplete ({reason})") from None
        if meta.get("vector_sha256") not in (None, file_sha256(tensor_path)):
            raise PaletteError(f"direction {stem}: {tensor_path.name} does not match the sha256 in {meta_path.name} "
                               f"(an interrupted save or an edited file); compute the direction again")
        if vector.ndim != 1 or not torch.isfinite(vector).all():
            raise PaletteError(f"direction {stem} is corrupt: the vector must be finite and one-dimensional")
        if "d_model" in meta and meta["d_model"] != vector.shape[0]:
            raise PaletteError(f"direction {stem} is corrupt: {meta_path.name} says d_model {meta['d_model']}, "
                               f"the vector has {vector.shape[0]}")
        return direction


def diff_in_means(
    target_mean: torch.Tensor, harmless_mean: torch.Tensor
) -> torch.Tensor:
    """Candidate directions r[l, p] = mean_T − mean_harmless: [n_layers, n_positions, d_model].

    The difference is taken in float64 and returned as float32; any matching shapes work (e.g. a single
    [d_model] mean each).

    Args:
        target_mean: mean residuals of the target domain, [n_layers, n_positions, d_model]
            (e.g. :meth:`Residuals.mean`).
        harmless_mean: mean residuals of the harmless prompts, same shape.

    Returns:
        The raw (unnormalised) difference, [n_layers, n_positions, d_model], float32.

    Examples:
        >>> target = torch.tensor([[[1.0, 2.0]]])      # [1 layer, 1 position, d_model 2]
        >>> diff_in_means(target, torch.tensor([[[0.5, 2.0]]]))
        tensor([[[0.5000, 0.0000]]])
    """
    return (target_mean.to(torch.float64) - harmless_mean.to(torch.float64)).to(torch.float32)
