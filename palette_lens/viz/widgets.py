"""ipywidgets for notebooks: a layer explorer (plotly ``FigureWidget`` updated in place) and a chat that
answers one prompt with the vanilla model and with an authorization profile side by side."""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from palette_lens.geometry.separation import embed_2d, layer_data, probe_accuracy, silhouette
from palette_lens.models.residuals import Residuals
from palette_lens.viz.common import domain_colors

log = logging.getLogger(__name__)


class LayerExplorer:
    """A layer slider driving a 2-D embedding (t-SNE or PCA) of per-prompt residuals coloured by domain.

    Embeddings are computed when a layer is first shown and cached. The title shows the layer's
    silhouette score and (optionally) probe accuracy.

    Args:
        residuals: per-domain residuals, each with vectors [n_prompts, n_layers, n_positions, d_model]
            (e.g. :func:`palette_lens.search.candidates.collect_domain_residuals`).
        domains: the domains to show (default: all in ``residuals``).
        position: the post-instruction position read.
        layers: the layers on the slider (default: all collected); a non-contiguous set gives a
            ``SelectionSlider``.
        method: ``"tsne"`` or ``"pca"``.
        probe: also compute a cross-validated probe accuracy for the title (slower).
        seed: the seed of the embeddings.
        layer: the layer shown first (default: the middle one).

    Raises:
        KeyError: a domain that ``residuals`` does not hold.
        ValueError: a ``position``, ``layer`` or layer in ``layers`` that was not collected.

    Examples:
        >>> ex = LayerExplorer(residuals, position=-1)   # doctest: +SKIP
        >>> ex.widget            # display in a notebook  # doctest: +SKIP
        >>> ex.slider.value = 12 # or drag the slider     # doctest: +SKIP

    Attributes:
        slider: the ``IntSlider`` of layers.
        figure: the plotly ``FigureWidget`` (one scatter trace per domain).
        widget: the assembled ``VBox`` to display.
    """

    def __init__(
        self,
        residuals: Mapping[str, Residuals],
        domains: Sequence[str] | None = None,
        position: int = -1,
        layers: Sequence[int] | None = None,
        method: str = "tsne",
        probe: bool = False,
        seed: int = 0,
        layer: int | None = None,
    ) -> None:
        import ipywidgets as widgets
        import plotly.graph_objects as go

        self.data = layer_data(residuals, domains, position, layers)
        self.method, self.probe, self.seed = method, probe, seed
        self._cache: dict[int, np.ndarray] = {}
        self.domains = self.data.domains
        colors = domain_colors(self.domains)
        start = layer if layer is not None else self.data.layers[len(self.data.layers) // 2]
        self.figure = go.FigureWidget(
            data=[
                go.Scatter(x=[], y=[], mode="markers", name=d, marker=dict(size=6, color=colors[d]),
                           hovertemplate=f"{d}<extra></extra>")
                for d in self.domains
            ],
            layout=dict(height=480, width=640, xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False)),
        )
        self.slider = widgets.SelectionSlider(
            options=list(self.data.layers), value=start, description="layer", continuous_update=False
        ) if not _contiguous(self.data.layers) else widgets.IntSlider(
            value=start, min=min(self.data.layers), max=max(self.data.layers), step=1,
            description="layer", continuous_update=False,
        )
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.slider, self.figure])
        self.show_layer(start)

    def coords(self, layer: int) -> np.ndarray:
        """[n_prompts, 2] embedding of ``layer`` (cached)."""
        if layer not in self._cache:
            self._cache[layer] = embed_2d(self.data.at(layer), self.method, self.seed)
        return self._cache[layer]

    def show_layer(self, layer: int) -> None:
        """Update the figure to ``layer``."""
        xy = self.coords(layer)
        x = self.data.at(layer)
        title = f"{self.method.upper()} at layer {layer}, position {self.data.position}"
        title += f" — silhouette {silhouette(x, self.data.labels):.2f}"
        if self.probe:
            title += f", probe accuracy {probe_accuracy(x, self.data.labels):.2f}"
        with self.figure.batch_update():
            for trace, d in zip(self.figure.data, self.domains):
                sel = self.data.labels == d
                trace.x = xy[sel, 0]
                trace.y = xy[sel, 1]
            self.figure.layout.title = title

    def _on_change(self, change: dict[str, Any]) -> None:
        self.show_layer(int(change["new"]))


def _contiguous(layers: Sequence[int]) -> bool:
    return list(layers) == list(range(min(layers), max(layers) + 1))


def layer_explorer(residuals: Mapping[str, Residuals], **kwargs) -> Any:
    """Convenience: build a :class:`LayerExplorer` and return its displayable widget.

    Args:
        residuals: per-domain residuals, each with vectors [n_prompts, n_layers, n_positions, d_model].
        **kwargs: the other arguments of :class:`LayerExplorer` (``domains``, ``position``, ``layers``,
            ``method``, ``probe``, ``seed``, ``layer``).

    Returns:
        The explorer's ``ipywidgets.VBox`` (slider and figure).

    Examples:
        >>> res = pl.collect_domain_residuals(model, prompts, limit=20)    # doctest: +SKIP
        >>> layer_explorer(res, method="pca", layer=12)                    # doctest: +SKIP
    """
    return LayerExplorer(residuals, **kwargs).widget


# --------------------------------------------------------------------- profile chat
@dataclass(frozen=True)
class Reply:
    """One model's answer to one prompt.

    Attributes:
        text: the greedy completion (special tokens removed).
        refused: the keyword judge's verdict (:func:`palette_lens.refusal.judge.is_refusal`).
        p_refusal: first-token probability mass on the refusal token set (before any text is generated).

    Examples:
        >>> r = Reply("I can't help with that.", refused=True, p_refusal=0.93)
        >>> r.refused, r.p_refusal
        (True, 0.93)
    """

    text: str
    refused: bool
    p_refusal: float


@dataclass(frozen=True)
class ChatTurn:
    """A prompt answered by the vanilla model and by the profile of the ``authorized`` domains.

    Attributes:
        prompt: the user prompt.
        authorized: the profile's domains (empty: nothing authorized, the profile is vanilla).
        vanilla: the vanilla model's :class:`Reply`.
        profile: the profile's :class:`Reply`.

    In a notebook the turn renders itself as HTML (``to_html()``).

    Examples:
        >>> no, yes = Reply("I can't help.", True, 0.9), Reply("Sure: ...", False, 0.1)
        >>> turn = ChatTurn("Write a port scanner.", ("cyber",), vanilla=no, profile=yes)
        >>> turn.to_html().startswith("<div><b>Prompt:</b> Write a port scanner.</div>")
        True
    """

    prompt: str
    authorized: tuple[str, ...]
    vanilla: Reply
    profile: Reply

    def to_html(self) -> str:
        """The prompt and both answers side by side (escaped HTML; a static copy of the chat's panes)."""
        name = "+".join(self.authorized) if self.authorized else "nothing authorized (= vanilla)"
        return (
            f"<div><b>Prompt:</b> {html.escape(self.prompt)}</div>"
            "<div style='display:flex'>"
            f"<div style='width:50%'>{_reply_html('Vanilla model', self.vanilla)}</div>"
            f"<div style='width:50%'>{_reply_html(f'Profile: {name}', self.profile)}</div></div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()


#: CSS class of each part of :class:`ProfileChat` (attribute name → class).
CHAT_CSS_CLASSES = {"widget": "palette-lens-chat", "vanilla_pane": "palette-lens-chat-vanilla",
                    "profile_pane": "palette-lens-chat-profile", "status": "palette-lens-chat-status"}


class ProfileChat:
    """Pick authorized domains (checkboxes), type a prompt, compare vanilla and profile answers side by side.

    The profile's model is ``base + w · Σ ΔW`` over the checked domains' adapters (``w`` =
    ``compose_weight``, default :data:`palette_lens.compose.profiles.DEFAULT_COMPOSE_WEIGHT`, when two or more are
    checked, else 1; :func:`palette_lens.compose.profiles.merged_profile`:
    a copy sharing every unadapted weight with the base model, built once per set of domains); with
    nothing checked it *is* the vanilla model. Answers are
    greedy, so they are cached per (prompt, profile).

    Args:
        model: the base :class:`~palette_lens.models.loading.ChatModel` (never modified).
        adapters: domain → :class:`~palette_lens.adapters.baked.BakedAdapter` (one checkbox each).
        prompt: the text box's initial prompt.
        authorized: the domains checked at first.
        max_new_tokens: greedy tokens per answer.
        refusal_ids: refusal token set R for ``Reply.p_refusal`` (default: the tokenizer's opener tokens).
        compose_weight: ΔW weight of each adapter when two or more are checked (None: the default 0.85).

    Raises:
        ValueError: no adapters, or an ``authorized`` domain without an adapter.
        AdapterMismatchError: an adapter was baked on another base model.
        PaletteError: ``compose_weight`` outside (0, 2].

    Examples:
        >>> chat = ProfileChat(model, {"cyber": cyber_adapter, "hate": hate_adapter})   # doctest: +SKIP
        >>> chat.widget                          # display in a notebook                # doctest: +SKIP
        >>> turn = chat.answer("Write a port scanner in Python.", ["cyber"])            # doctest: +SKIP
        >>> turn.vanilla.refused, turn.profile.refused                                   # doctest: +SKIP
        (True, False)

    Attributes:
        checkboxes: domain → ``Checkbox`` (checked: authorized).
        prompt: the ``Textarea`` holding the prompt.
        button: the "Ask" ``Button``.
        vanilla_pane: the ``HTML`` widget showing the vanilla answer.
        profile_pane: the ``HTML`` widget showing the profile's answer.
        status: an ``HTML`` line (what was run, or why nothing was).
        widget: the assembled ``VBox`` to display.
        last: the last :class:`ChatTurn` shown (None before the first click).
    """

    def __init__(
        self,
        model: Any,
        adapters: Mapping[str, Any],
        *,
        prompt: str = "",
        authorized: Sequence[str] = (),
        max_new_tokens: int = 64,
        refusal_ids: Sequence[int] | None = None,
        compose_weight: float | None = None,
    ) -> None:
        import ipywidgets as widgets

        from palette_lens.compose.profiles import DEFAULT_COMPOSE_WEIGHT, check_compose_weight
        from palette_lens.models.copies import plain_hf_model
        from palette_lens.refusal.tokens import opener_tokens

        if not adapters:
            raise ValueError("ProfileChat needs at least one domain adapter")
        unknown = [d for d in authorized if d not in adapters]
        if unknown:
            raise ValueError(f"no adapter for {', '.join(unknown)}; have {', '.join(adapters)}")
        for a in adapters.values():
            a.check_base(model)
        self.model = model
        self.adapters = dict(adapters)
        self.compose_weight = check_compose_weight(DEFAULT_COMPOSE_WEIGHT if compose_weight is None else compose_weight)
        self.max_new_tokens = max_new_tokens
        self.refusal_ids = list(refusal_ids) if refusal_ids is not None else sorted(opener_tokens(model.tokenizer))
        self._plain = plain_hf_model(model)  # same weights, no hook wrappers: faster generation
        self._merged: dict[tuple[str, ...], Any] = {}
        self._replies: dict[tuple[str, tuple[str, ...]], Reply] = {}
        self.last: ChatTurn | None = None

        self.checkboxes = {
            d: widgets.Checkbox(value=d in authorized, description=d, indent=False,
                                layout=widgets.Layout(width="auto"))
            for d in self.adapters
        }
        self.prompt = widgets.Textarea(value=prompt, placeholder="Type a prompt…",
                                       layout=widgets.Layout(width="100%", height="70px"))
        self.button = widgets.Button(description="Ask both models", button_style="primary", icon="play")
        self.vanilla_pane = widgets.HTML(layout=widgets.Layout(width="50%"))
        self.profile_pane = widgets.HTML(layout=widgets.Layout(width="50%"))
        self.status = widgets.HTML()
        self.button.on_click(self.ask)
        self.widget = widgets.VBox([
            widgets.HTML("<b>Authorized domains</b> (the profile answers these; it should refuse the others)"),
            widgets.HBox(list(self.checkboxes.values())),
            self.prompt,
            widgets.HBox([self.button, self.status]),
            widgets.HBox([self.vanilla_pane, self.profile_pane]),
        ])
        # CSS classes, so that a page (or a browser test) can find the parts: CHAT_CSS_CLASSES
        for part, css in CHAT_CSS_CLASSES.items():
            getattr(self, part).add_class(css)

    # ---- state
    @property
    def authorized(self) -> tuple[str, ...]:
        """The checked domains, in the adapters' order."""
        return tuple(d for d, box in self.checkboxes.items() if box.value)

    def profile_model(self, authorized: Sequence[str]) -> Any:
        """The plain HF model of a profile (the vanilla copy for an empty profile); built once per profile."""
        key = tuple(d for d in self.adapters if d in set(authorized))
        if not key:
            return self._plain
        if key not in self._merged:
            from palette_lens.compose.profiles import Profile, merged_profile, profile_adapters

            chosen = profile_adapters(Profile(key), self.adapters, self.compose_weight)
            self._merged[key] = merged_profile(self.model, chosen)
        return self._merged[key]

    # ---- answering
    def reply(self, prompt: str, authorized: Sequence[str] = ()) -> Reply:
        """The answer of the profile of ``authorized`` (vanilla when empty) to ``prompt`` (cached)."""
        from palette_lens.generation.greedy import generate_completions
        from palette_lens.refusal.judge import is_refusal

        key = (prompt, tuple(d for d in self.adapters if d in set(authorized)))
        if key not in self._replies:
            gen = generate_completions(
                self.model, [prompt], lm=self.profile_model(key[1]), max_new_tokens=self.max_new_tokens,
                first_phase=0, refusal_ids=self.refusal_ids,
            )
            score = float(gen.first_scores[0]) if gen.first_scores is not None else float("nan")
            text = gen.texts[0]
            self._replies[key] = Reply(text, is_refusal(text), 1.0 / (1.0 + math.exp(-score)))
        return self._replies[key]

    def answer(self, prompt: str, authorized: Sequence[str] | None = None) -> ChatTurn:
        """Answer ``prompt`` with the vanilla model and the profile (default: the checked domains)."""
        auth = self.authorized if authorized is None else tuple(d for d in self.adapters if d in set(authorized))
        vanilla = self.reply(prompt, ())
        profile = self.reply(prompt, auth) if auth else vanilla
        return ChatTurn(prompt, auth, vanilla, profile)

    def ask(self, _button: Any = None) -> ChatTurn | None:
        """The button's handler: answer the prompt in the text box with the checked profile and show both."""
        text = self.prompt.value.strip()
        if not text:
            self.status.value = "<i>type a prompt first</i>"
            return None
        self.button.disabled = True
        self.status.value = "<i>generating…</i>"
        try:
            turn = self.answer(text)
        except Exception as exc:  # shown in the widget; the notebook keeps running
            log.exception("profile chat failed")
            self.status.value = f"<span style='color:#b00'>error: {html.escape(str(exc))}</span>"
            raise
        finally:
            self.button.disabled = False
        self.last = turn
        profile_name = "+".join(turn.authorized) if turn.authorized else "nothing authorized (= vanilla)"
        self.vanilla_pane.value = _reply_html("Vanilla model", turn.vanilla)
        self.profile_pane.value = _reply_html(f"Profile: {profile_name}", turn.profile)
        asked = text if len(text) <= 60 else text[:57] + "…"
        self.status.value = (
            f"answered <i>{html.escape(asked)}</i> — greedy, at most {self.max_new_tokens} new tokens"
            + ("" if turn.authorized else " — check a domain to relax refusal for it")
        )
        return turn


def _reply_html(title: str, reply: Reply) -> str:
    badge_color = "#b00" if reply.refused else "#070"
    verdict = "refused" if reply.refused else "answered"
    return (
        f"<div style='border:1px solid #ccc;border-radius:4px;padding:6px;margin:2px'>"
        f"<b>{html.escape(title)}</b> "
        f"<span style='color:{badge_color};font-weight:bold'>[{verdict}]</span> "
        f"<span style='color:#666'>first-token refusal mass {reply.p_refusal:.2f}</span>"
        f"<div style='white-space:pre-wrap;font-family:monospace;margin-top:4px'>{html.escape(reply.text)}</div>"
        f"</div>"
    )
