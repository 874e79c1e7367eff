"""Rebuild what a config file describes, transforms included: the transformed float model
(its SmoothQuant / equalization scales applied exactly as recorded) and the analysed tensors
carrying the file's scales, zero points and corrected biases, bit for bit.

GPTQ's rounded weights are not in the config file (they would make it as large as the model):
a file with GPTQ is refused here with one line saying to export from the statistics file.
"""

from __future__ import annotations

import math

from qviz.core.calibration.analysis import TensorResult, quant_tensors
from qviz.core.errors import QvizError
from qviz.core.files.config_file import SavedConfig, check_qparams_fit
from qviz.core.model.loading import LoadedModel, TensorKind
from qviz.core.transforms.bias import bias_site
from qviz.core.transforms.plan import TransformPlan, plan_from_scales
from qviz.core.transforms.weight_transforms import AppliedWeight

__all__ = ["saved_results"]


def saved_results(
    model: LoadedModel, saved: SavedConfig
) -> tuple[TransformPlan, list[TensorResult]]:
    """The transformed model (``plan.model``) and the file's tensors on it, in graph order."""
    if saved.model_sha256 != model.sha256:
        raise QvizError(
            f"the config file was made for a different model file ({saved.model_source}, "
            f"sha256 {saved.model_sha256[:12]}…), not {model.source}"
        )
    gptq = [t.name for t in saved.tensors if t.config.transforms.gptq]
    if gptq:
        raise QvizError(
            f"the config file uses GPTQ ('{gptq[0]}'), whose rounded weights are in the exported "
            "Q/DQ model, not in the config: export from the statistics file (--stats) instead"
        )
    plan = plan_from_scales(
        model, {r.activation: (r.kind, r.scales, r.alpha) for r in saved.rescalings}
    )
    tmodel = plan.model
    by_key = {(t.name, t.kind): t for t in quant_tensors(tmodel)}
    dims = {t.name: tuple(int(d) for d in t.dims) for t in tmodel.model.graph.initializer}
    results = []
    for st in saved.tensors:
        tensor = by_key.get((st.name, st.kind))
        if tensor is None:
            raise QvizError(
                f"the config file quantizes {st.kind.value} '{st.name}', which this model "
                "does not have"
            )
        check_qparams_fit(st.qparams, dims.get(st.name), f"{saved.origin}: tensor '{st.name}'")
        applied = None
        if st.corrected_bias is not None:
            if st.kind is not TensorKind.WEIGHT:
                raise QvizError(f"activation '{st.name}' cannot carry a corrected bias")
            site, _ = bias_site(tmodel, tensor.layer, st.corrected_bias.size)
            applied = AppliedWeight(
                None, st.corrected_bias, site, st.metrics, None,
                (math.nan, math.nan), (math.nan, math.nan), "none",
            )
        results.append(TensorResult(st.name, tensor.layer, st.kind, st.config, st.qparams,
                                    st.metrics, applied=applied))
    order = {key: i for i, key in enumerate(by_key)}
    results.sort(key=lambda r: order[(r.name, r.kind)])
    return plan, results
