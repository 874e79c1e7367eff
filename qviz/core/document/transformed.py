"""The document's transforms: what each tensor is measured on, and its untransformed twin.

A part of `Document` kept apart by concern (like the A/B comparison). The configuration's
channel rescalings (SmoothQuant, equalization) make a transformed model and statistics
(`qviz.core.transforms.plan`); every tensor of the document is analysed on those, and a
tensor whose rescaling changed is re-measured even when its own settings did not (its
*context*, `TransformPlan.context`, is part of what its result is keyed by). For the layer
view, the same tensor measured without any transform is the faint "before" overlay.

A configuration whose transforms cannot be planned (statistics without per-channel data) is
refused when applied, with one line; a session opened with one falls back to the
untransformed model and says why in `transform_note`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from qviz.core.calibration.analysis import QuantTensor, TensorKey, TensorResult, analyze_tensor
from qviz.core.calibration.config import QuantConfig, TensorConfig
from qviz.core.document.jobs import AnalysisJob
from qviz.core.document.markers import MethodRanges
from qviz.core.document.tensors import TensorIndex
from qviz.core.errors import QvizError
from qviz.core.layerdata.before import Before
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.stats.collect import CalibrationStats
from qviz.core.stats.tensor_stats import TensorStats
from qviz.core.transforms.plan import TransformPlan, transform_model
from qviz.core.transforms.settings import NO_TRANSFORMS

__all__ = ["TransformedViews"]

_BEFORE_ENTRIES = 64


def _plain(cfg: TensorConfig) -> TensorConfig:
    return replace(cfg, transforms=NO_TRANSFORMS)


class TransformedViews:
    """Provided to `Document` (see the module docstring)."""

    model: LoadedModel | None
    stats: CalibrationStats | None
    _index: TensorIndex
    _markers: MethodRanges
    transform_note: str | None = None
    _before: dict[tuple[TensorKey, TensorConfig], Before | None]
    _planned_weights: dict[tuple[int, str], tuple[LoadedModel, np.ndarray]]

    def forget_transformed(self) -> None:
        """New model or statistics: nothing measured without transforms holds any more."""
        self._before = {}
        self._planned_weights = {}
        self.transform_note = None

    @property
    def config(self) -> QuantConfig:
        raise NotImplementedError

    def config_for(self, key: TensorKey) -> TensorConfig:
        raise NotImplementedError

    def can_analyze(self, key: TensorKey) -> bool:
        raise NotImplementedError

    def element_count(self, key: TensorKey) -> float:
        raise NotImplementedError

    def activation_stats(self, key: TensorKey) -> TensorStats | None:
        """The statistics the activation is measured on (rescaled when transformed)."""
        return None if self.stats is None else self.measured_on(key)[1]

    # ------------------------------------------------------------------ plans
    def transform_plan(self, config: QuantConfig | None = None) -> TransformPlan:
        """The plan everything is measured on for `config` (default: the current one); the
        untransformed one, with `transform_note` saying why, when it cannot be made."""
        assert self.model is not None
        try:
            plan = transform_model(self.model, self.stats, config or self.config)
        except QvizError as exc:
            if config is None or config == self.config:
                self.transform_note = str(exc)
            return TransformPlan(self.model, self.stats, self.model, self.stats)
        if config is None or config == self.config:
            self.transform_note = "; ".join(plan.notes) or None
        return plan

    def check_transforms(self, config: QuantConfig) -> None:
        """QvizError (one line) when `config`'s transforms cannot be planned here."""
        if self.model is not None:
            transform_model(self.model, self.stats, config)

    def uses_transforms(self, config: QuantConfig | None = None) -> bool:
        c = config or self.config
        return any(cfg.transforms.any for cfg in (c.weights, c.activations,
                                                  *c.overrides.values()))

    def context_of(self, key: TensorKey, config: QuantConfig | None = None) -> str:
        if self.model is None or not self.uses_transforms(config):
            return ""
        return self.transform_plan(config).context(key.name, key.kind)

    def context_changes(self, before: QuantConfig, after: QuantConfig) -> list[TensorKey]:
        """Tensors whose rescalings differ between two configurations."""
        if self.model is None or not (self.uses_transforms(before) or self.uses_transforms(after)):
            return []
        a, b = self.transform_plan(before), self.transform_plan(after)
        return [k for k in self._index if a.context(k.name, k.kind) != b.context(k.name, k.kind)]

    def planned_tensor(self, plan: TransformPlan, key: TensorKey) -> QuantTensor:
        """The tensor with its layer as the transformed model has it (a Mul may be in)."""
        t = self._index.tensor(key)
        if plan.identity:
            return t
        layer = next(layer for layer in plan.model.layers if layer.node_name == t.layer.node_name)
        return QuantTensor(t.name, t.kind, layer)

    # ------------------------------------------------------------------ analysis
    def analyze_with(self, key: TensorKey, cfg: TensorConfig,
                     config: QuantConfig | None = None) -> TensorResult:
        """`key` under `cfg`, on the plan of `config` (QvizError as analyze_tensor)."""
        plan = self.transform_plan(config)
        result = analyze_tensor(plan.model, plan.stats, self.planned_tensor(plan, key), cfg)
        context = plan.context(key.name, key.kind)
        return replace(result, context=context) if context else result

    def analysis_job(self, t: QuantTensor, cfg: TensorConfig,
                     config: QuantConfig | None = None) -> AnalysisJob:
        plan = self.transform_plan(config)
        if plan.identity:
            return AnalysisJob(t.key, t, cfg)
        return AnalysisJob(t.key, self.planned_tensor(plan, t.key), cfg, plan.model, plan.stats,
                           plan.context(t.name, t.kind))

    def measured_on(self, key: TensorKey) -> tuple[np.ndarray | None, TensorStats | None]:
        """The weight values and activation statistics the tensor is measured on now."""
        plan = self.transform_plan()
        if key.kind is TensorKind.WEIGHT:
            if plan.identity or not plan.context(key.name, key.kind):
                return self._index.weight_values(key.name), None
            # One array per transformed model: the plot caches are keyed by its identity.
            wkey = (id(plan.model), key.name)
            hit = self._planned_weights.get(wkey)
            if hit is None or hit[0] is not plan.model:
                hit = (plan.model, plan.model.weight(key.name))
                self._planned_weights[wkey] = hit
                while len(self._planned_weights) > _BEFORE_ENTRIES:
                    self._planned_weights.pop(next(iter(self._planned_weights)))
            return hit[1], None
        stats = plan.stats
        return None, None if stats is None else stats.tensors.get(key.name)

    def _what(self, key: TensorKey, cfg: TensorConfig) -> str:
        """What transforms `key`, in words: its own transforms and rescalings reaching it."""
        plan = self.transform_plan()
        parts = []
        for act, a in plan.scalings.items():
            if key.kind is TensorKind.ACTIVATION and act == key.name:
                parts.append(f"{a.label}, {a.site.expression}")
            elif key.kind is TensorKind.WEIGHT and any(c.weight == key.name
                                                       for c in a.site.consumers):
                parts.append(f"{a.label} of its input (rows × s)")
            elif key.kind is TensorKind.WEIGHT and a.site.producer is not None \
                    and a.site.producer.weight == key.name:
                parts.append(f"{a.label} of its output (channels ÷ s)")
        own = [w for w, on in (("GPTQ", cfg.transforms.gptq),
                               ("bias correction", cfg.transforms.bias_correction)) if on]
        return "; ".join([*parts, *own])

    def before(self, key: TensorKey) -> Before | None:
        """The tensor without any transform (None when nothing transforms it)."""
        if self.model is None or not self.uses_transforms():
            return None
        cfg = self.config_for(key)
        if not cfg.quantize or (not cfg.transforms.any and not self.context_of(key)):
            return None
        cache_key = (key, cfg)
        if cache_key not in self._before:
            try:
                result = analyze_tensor(self.model, self.stats, self._index.tensor(key),
                                        _plain(cfg))
            except QvizError:
                self._before[cache_key] = None
            else:
                values = stats = None
                if key.kind is TensorKind.WEIGHT:
                    values = self._index.weight_values(key.name)
                elif self.stats is not None:
                    stats = self.stats.tensors.get(key.name)
                self._before[cache_key] = Before(result, values, stats, self._what(key, cfg))
            while len(self._before) > _BEFORE_ENTRIES:
                self._before.pop(next(iter(self._before)))
        return self._before[cache_key]
