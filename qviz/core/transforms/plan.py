"""The transformed model: every channel rescaling a configuration asks for, applied.

:func:`transform_model` takes the float model, its statistics and a configuration and returns
a :class:`TransformPlan`: the float model with SmoothQuant / equalization scales folded in (or
explicit Muls), the statistics of the rescaled activations (exact extrema and moments; the
tensor histogram rebuilt from the per-channel ones), the scale of each activation and why an
activation asked for could not be rescaled (one line each; it is then left as it was). The
rest of qviz — analysis, the Q/DQ builder, evaluation, export — runs on ``plan.model`` and
``plan.stats`` unchanged, so what is measured is what ships.

Activations are processed in graph order, each against the weights as earlier rescalings left
them (a layer between two rescaled activations has its input channels scaled by one and its
output channels by the other). A rescaled weight is held in memory only until the last site
that changes it, then stored in the new model (its data file, for a model in files), so a
plan's memory does not grow with the model. Plans are cached by (model, statistics,
configuration).
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType

import numpy as np

from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.errors import QvizError
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.stats.weight_stats import WeightStats
from qviz.core.transforms.rewrite import ModelRewrite
from qviz.core.transforms.scales import (
    AlphaSearch,
    ConsumerInput,
    channel_absmax,
    equalization_scales,
    rescaled,
    scale_tensor_stats,
    search_alpha,
    smoothquant_scales,
)
from qviz.core.transforms.sites import FoldKind, GraphIndex, ScalingSite, find_site

__all__ = [
    "AppliedScaling",
    "ScalingKind",
    "TransformPlan",
    "plan_from_scales",
    "transform_model",
]

# Ops equalization may find between the two layers of a pair.
_EQUALIZE_CHAIN = frozenset({"Relu", "LeakyRelu", "ReLU6", "Add", "MaxPool"})
_CACHE_SIZE = 6


class ScalingKind(Enum):
    SMOOTHQUANT = "smoothquant"
    EQUALIZE = "equalize"


@dataclass(frozen=True, eq=False)
class AppliedScaling:
    """One rescaled activation: ``X / scales`` (one positive value per channel)."""

    site: ScalingSite
    kind: ScalingKind
    scales: np.ndarray
    alpha: float | None = None  # SmoothQuant's alpha (the one "auto" chose)
    search: AlphaSearch | None = None  # "auto": the estimated error at every alpha

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.scales.tobytes()).hexdigest()[:16]

    @property
    def label(self) -> str:
        if self.kind is ScalingKind.EQUALIZE:
            return "equalized"
        auto = " (auto)" if self.search is not None else ""
        return f"SmoothQuant α={self.alpha:g}{auto}"


@dataclass(frozen=True, eq=False)
class TransformPlan:
    """The models and statistics everything downstream runs on (see the module docstring).

    ``original`` and ``original_stats`` are what came in; ``model`` and ``stats`` are them with
    the rescalings applied (the same objects when nothing is rescaled). ``skipped`` maps an
    activation to why its rescaling could not be expressed.
    """

    original: LoadedModel
    original_stats: CalibrationStats | None
    model: LoadedModel
    stats: CalibrationStats | None
    scalings: Mapping[str, AppliedScaling] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    _contexts: Mapping[tuple[str, TensorKind], str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("scalings", "skipped", "_contexts"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def identity(self) -> bool:
        return not self.scalings

    def context(self, name: str, kind: TensorKind) -> str:
        """What, beyond its own settings, a tensor's analysis depends on: the digests of the
        scales applied to it ("" when none)."""
        return self._contexts.get((name, kind), "")

    @property
    def notes(self) -> tuple[str, ...]:
        """One line per reason: a decoder skips the same two sites in every block, and a
        hundred near-identical lines would bury everything else."""
        groups: dict[str, list[tuple[str, str]]] = {}
        for act, why in self.skipped.items():
            groups.setdefault(re.sub(r"'[^']*'", "'…'", why), []).append((act, why))
        lines = []
        for members in groups.values():
            act, why = members[0]
            if len(members) == 1:
                lines.append(f"'{act}' not rescaled: {why}")
            else:
                lines.append(f"{len(members)} activations not rescaled, e.g. '{act}': {why}")
        return tuple(lines)


def _identity(model: LoadedModel, stats: CalibrationStats | None) -> TransformPlan:
    return TransformPlan(model, stats, model, stats)


def _activations(model: LoadedModel) -> list[str]:
    seen: dict[str, None] = {}
    for layer in model.layers:
        for name in layer.activations:
            seen.setdefault(name, None)
    return list(seen)


def _cache_key(model: LoadedModel, config: QuantConfig) -> tuple[object, ...] | None:
    """The settings a plan depends on, or None when nothing is rescaled."""
    wanted = []
    for act in _activations(model):
        cfg = config.for_tensor(act, TensorKind.ACTIVATION)
        if cfg.transforms.rescales_channels:
            wanted.append((act, cfg))
    if not wanted:
        return None
    # "auto" and the error estimate read the weights' settings of every layer too.
    weights = tuple(
        config.for_tensor(layer.weight, TensorKind.WEIGHT)
        for layer in model.layers if layer.weight is not None
    )
    return (tuple(wanted), weights)


_LOCK = threading.Lock()
_PLANS: OrderedDict[tuple[int, int, object], tuple[object, object, TransformPlan]] = OrderedDict()


def transform_model(
    model: LoadedModel, stats: CalibrationStats | None, config: QuantConfig
) -> TransformPlan:
    """The plan for `config` on `model` and `stats` (cached; see the module docstring).

    QvizError when a rescaling needs statistics that are missing or predate per-channel
    statistics ("recollect to use this"); a rescaling the graph cannot express is skipped
    and said in `skipped`.
    """
    key = _cache_key(model, config)
    if key is None:
        return _identity(model, stats)
    ckey = (id(model), id(stats), key)
    with _LOCK:
        hit = _PLANS.get(ckey)
        if hit is not None and hit[0] is model and hit[1] is stats:
            _PLANS.move_to_end(ckey)
            return hit[2]
    plan = _build(model, stats, config)
    with _LOCK:
        _PLANS[ckey] = (model, stats, plan)
        while len(_PLANS) > _CACHE_SIZE:
            _PLANS.popitem(last=False)
    return plan


@dataclass(frozen=True)
class _Todo:
    """An activation to rescale: its settings, statistics and where the scale goes."""

    act: str
    cfg: TensorConfig
    stats: TensorStats
    site: ScalingSite


def _todo(
    model: LoadedModel, stats: CalibrationStats | None, config: QuantConfig
) -> tuple[list[_Todo], dict[str, str]]:
    """The activations to rescale, in graph order, and why the others asked for cannot be
    (QvizError when statistics are missing, as in :func:`transform_model`)."""
    index = GraphIndex(model)
    todo: list[_Todo] = []
    skipped: dict[str, str] = {}
    for act in _activations(model):
        cfg = config.for_tensor(act, TensorKind.ACTIVATION)
        t = cfg.transforms
        if not t.rescales_channels:
            continue
        what = "SmoothQuant" if t.smoothquant is not None else "equalization"
        if stats is None or act not in stats.tensors:
            raise QvizError(f"{what} on '{act}' needs calibration statistics: calibrate first")
        ts = stats.tensors[act]
        if ts.channel_min is None or ts.channel_axis is None:
            skipped[act] = "it has no per-channel statistics (no fixed feature axis)"
            continue
        site = find_site(index, act, ts.channel_axis, ts.channel_min.size)
        if isinstance(site, str):
            skipped[act] = site
            continue
        if ts.moments is None or not ts.moments.has_histograms:
            raise QvizError(
                f"the statistics hold no per-channel histograms for '{act}' (collected by an "
                f"older qviz or without them): recollect to use {what}"
            )
        why = _equalize_refusal(site) if t.smoothquant is None else ""
        if why:
            skipped[act] = why
            continue
        todo.append(_Todo(act, cfg, ts, site))
    return todo, skipped


def _build(
    model: LoadedModel, stats: CalibrationStats | None, config: QuantConfig
) -> TransformPlan:
    todo, skipped = _todo(model, stats, config)
    if not todo:
        return TransformPlan(model, stats, model, stats, skipped=skipped)
    assert stats is not None
    weights = _Weights(model, [item.site for item in todo])
    applied: dict[str, AppliedScaling] = {}
    new_stats = dict(stats.tensors)
    grams = dict(stats.grams)
    for i, item in enumerate(todo):
        site, ts, cfg = item.site, item.stats, item.cfg
        consumers = [
            ConsumerInput(
                weights.current(c.weight), c.axis,
                config.for_tensor(c.weight, TensorKind.WEIGHT),
                (c.layer.channel_axis, c.layer.reduction_axis),
                _outputs_per_row(c.layer.weight_shape, c.axis),
            )
            for c in site.consumers
        ]
        rows = [np.moveaxis(c.weight, c.axis, 0).reshape(site.channels, -1) for c in consumers]
        smooth = cfg.transforms.smoothquant
        if smooth is not None:
            search = None
            alpha = smooth.alpha
            if alpha is None:
                search = search_alpha(ts, cfg, consumers)
                alpha = search.best
            s = smoothquant_scales(channel_absmax(ts), rows, alpha)
            scaling = AppliedScaling(site, ScalingKind.SMOOTHQUANT, s, alpha, search)
        else:
            assert site.producer is not None and site.producer.weight is not None
            producer_w = weights.current(site.producer.weight)
            axis = site.folds[0].weight_axis
            assert axis is not None
            produced = np.moveaxis(producer_w, axis, 0).reshape(site.channels, -1)
            s = equalization_scales(produced, rows)
            scaling = AppliedScaling(site, ScalingKind.EQUALIZE, s)
        del consumers, rows
        weights.rescale(i, site, scaling.scales)
        applied[item.act] = scaling
        new_stats[item.act] = scale_tensor_stats(ts, scaling.scales)
        for c in site.consumers:
            if c.weight in grams:
                grams[c.weight] = grams[c.weight].scaled(scaling.scales)
    out_model = weights.rewrite.finish([(a.site, a.scales) for a in applied.values()])
    # The rest of the statistics stay as they are, except the stored statistics of the weights
    # a rescaling changed: those are measured again on the transformed model.
    out_stats = replace(
        stats, tensors=new_stats, grams=grams,
        weights=_Without(stats.weights, weights.changed),
    )
    return TransformPlan(model, stats, out_model, out_stats, applied, skipped, _contexts(applied))


def plan_from_scales(
    model: LoadedModel, scalings: Mapping[str, tuple[ScalingKind, np.ndarray, float | None]]
) -> TransformPlan:
    """The plan that applies given scales (a config file's) without any statistics: the same
    sites :func:`transform_model` finds, the same edits; QvizError when one cannot be
    expressed on this model any more."""
    if not scalings:
        return _identity(model, None)
    index = GraphIndex(model)
    sites: dict[str, ScalingSite] = {}
    for act in _activations(model):
        if act not in scalings:
            continue
        site = find_site(index, act, model.activation_channel_axis(act), scalings[act][1].size)
        if isinstance(site, str):
            raise QvizError(f"the rescaling of '{act}' cannot be applied to this model: {site}")
        sites[act] = site
    missing = sorted(set(scalings) - set(sites))
    if missing:
        raise QvizError(f"the model has no quantized activation '{missing[0]}' to rescale")
    weights = _Weights(model, list(sites.values()))
    applied: dict[str, AppliedScaling] = {}
    for i, (act, site) in enumerate(sites.items()):
        kind, s, alpha = scalings[act]
        weights.rescale(i, site, s)
        applied[act] = AppliedScaling(site, kind, np.asarray(s, dtype=np.float64), alpha)
    out_model = weights.rewrite.finish([(a.site, a.scales) for a in applied.values()])
    return TransformPlan(model, None, out_model, None, applied, {}, _contexts(applied))


def _outputs_per_row(shape: tuple[int, ...] | None, axis: int) -> int:
    if shape is None:
        return 1
    return int(np.prod([d for i, d in enumerate(shape) if i != axis]))


def _equalize_refusal(site: ScalingSite) -> str:
    """Why equalization does not apply at `site` ("" when it does)."""
    pair = "equalization needs a Conv/Gemm/MatMul producing it through ReLU, ReLU6, LeakyReLU " \
           "or nothing"
    if not site.folded:
        return f"{pair}; here: {site.mul_reason}"
    if site.producer is None or site.folds[0].kind is not FoldKind.LAYER:
        return f"{pair}; it is {site.expression}"
    odd = [op for op in site.chain if op not in _EQUALIZE_CHAIN]
    if odd:
        return f"{pair}; there is {odd[0]} between them"
    return ""


def _touched(site: ScalingSite) -> list[tuple[str, int, bool]]:
    """The weights rescaling `site` changes: (name, channel axis, divided): the consumers'
    input channels times s, the producing layer's output channels divided by s."""
    out = [(c.weight, c.axis, False) for c in site.consumers]
    first = site.folds[0] if site.folds else None
    if first is not None and first.kind is FoldKind.LAYER and site.producer is not None:
        assert site.producer.weight is not None and first.weight_axis is not None
        out.append((site.producer.weight, first.weight_axis, True))
    return out


class _Weights:
    """The rescaled weights of a plan: each held from the first site that changes it to the
    last (a layer between two rescaled activations is changed by both), then handed to the
    rewrite, which stores it in the new model's data file. So only the weights between two
    sites are in memory, never the whole rescaled model."""

    def __init__(self, model: LoadedModel, sites: list[ScalingSite]) -> None:
        self._model = model
        self.rewrite = ModelRewrite(model)
        self._held: dict[str, np.ndarray] = {}
        self._last = {name: i for i, site in enumerate(sites) for name, _, _ in _touched(site)}
        self.changed = set(self._last)

    def current(self, name: str) -> np.ndarray:
        """Weight `name` as the sites so far left it."""
        return self._held[name] if name in self._held else self._model.weight(name)

    def rescale(self, i: int, site: ScalingSite, s: np.ndarray) -> None:
        """Apply site number `i` (of those given) with scales `s`."""
        for name, axis, divide in _touched(site):
            self._held[name] = rescaled(self.current(name), axis, s, divide=divide)
            if self._last[name] == i:
                self.rewrite.set_weight(name, self._held.pop(name))


def _contexts(applied: Mapping[str, AppliedScaling]) -> dict[tuple[str, TensorKind], str]:
    parts: dict[tuple[str, TensorKind], list[str]] = {}
    for act, a in applied.items():
        tag = f"{a.kind.value}:{act}:{a.digest}"
        parts.setdefault((act, TensorKind.ACTIVATION), []).append(tag)
        for c in a.site.consumers:
            parts.setdefault((c.weight, TensorKind.WEIGHT), []).append(tag)
        if a.site.producer is not None and a.site.producer.weight is not None \
                and a.site.folds and a.site.folds[0].kind is FoldKind.LAYER:
            parts.setdefault((a.site.producer.weight, TensorKind.WEIGHT), []).append(tag)
    return {k: "|".join(v) for k, v in parts.items()}


class _Without(Mapping[str, WeightStats]):
    """`base` without the names in `drop`, read lazily as `base` is (a stats file's weight
    statistics are read one at a time, when asked for)."""

    def __init__(self, base: Mapping[str, WeightStats], drop: set[str]) -> None:
        self._base, self._drop = base, frozenset(drop)

    def __getitem__(self, name: str) -> WeightStats:
        if name in self._drop:
            raise KeyError(name)
        return self._base[name]

    def __iter__(self) -> Iterator[str]:
        return (n for n in self._base if n not in self._drop)

    def __len__(self) -> int:
        return sum(1 for _ in self)
