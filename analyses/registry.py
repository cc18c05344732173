"""The analysis registry: name → ``AnalysisSpec``, read by ``interp report`` and ``interp.report.run_report``.

Importing this module is cheap: an entry names its functions as ``"module:attribute"`` strings that are
imported only when the analysis runs (``spec.load()``). An entry whose module is not installed yet is listed
as unavailable and skipped with a message instead of breaking the report.

To add an analysis, append one ``AnalysisSpec`` to ``_SPECS`` below (``in_default=False`` keeps a slow one out
of the default ``interp report`` run, whose budget is a few minutes on 2 CPU cores)::

    AnalysisSpec("sinks", "Attention-sink heads (Xiao et al. 2023)", run="interp.analyses.sinks:run",
                 params="interp.analyses.sinks:SinksParams",
                 official_outputs="interp.analyses.sinks:write_official")   # optional

``params`` names a frozen dataclass subclassing ``interp.params.Params`` (typed fields with defaults, documented
ranges/choices, ``validate``/``check_model``): ``interp report`` builds it from ``[params.<name>]`` of ``--config``
and ``--param NAME.KEY=VALUE``, and rejects an unknown key or a bad value before the model loads
(``interp analyses --params`` lists every parameter).

Contract of ``run(model, params, out_dir) -> dict[str, pandas.DataFrame]``: ``params`` is an instance of the
spec's dataclass (``run`` also accepts a dict or ``None`` through ``Params.coerce``); key ``"scores"`` holds the
tidy score table of ``interp.scores`` (columns model, analysis, score, layer, head, value, n_samples, level);
``"per_token"`` (optional) holds per-token rows; other keys are kept as extra tables.
``official_outputs(results, params, out_dir) -> list[Path]`` writes published formats into ``out_dir``.
``data_files(params) -> list[str | Path | dict]`` (optional) names the data files read; the manifest records
each with its sha256 (a dict ``{"path", "sha256"}`` may give the hash of built-in data itself).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace


class AnalysisUnavailable(RuntimeError):
    """The module implementing an analysis is not installed (yet)."""


def _resolve(ref):
    if not isinstance(ref, str):
        return ref
    mod, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise AnalysisUnavailable(f"module {mod!r} is not available ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise AnalysisUnavailable(f"module {mod!r} has no attribute {attr!r}") from None


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis. Callables may be given directly or as lazy ``"module:attribute"`` strings."""

    name: str
    description: str
    run: Callable | str
    params: type | str | None = None  # an interp.params.Params subclass; None: no parameters
    official_outputs: Callable | str | None = None
    data_files: Callable | str | None = None
    in_default: bool = True  # False: too slow for the default `interp report`; run it with --analyses NAME

    def modules(self) -> list[str]:
        refs = [self.run, self.params, self.official_outputs, self.data_files]
        return sorted({r.partition(":")[0] for r in refs if isinstance(r, str)})

    def available(self) -> bool:
        """True when every module it names can be found (checked without importing them)."""
        for mod in self.modules():
            try:
                if importlib.util.find_spec(mod) is None:
                    return False
            except (ImportError, ValueError):
                return False
        return True

    def load(self) -> AnalysisSpec:
        """A copy with every lazy reference imported; ``AnalysisUnavailable`` if a module is missing."""
        params = _resolve(self.params)
        if params is None:
            from interp.params import NoParams

            params = NoParams
        return replace(self, run=_resolve(self.run), params=params,
                       official_outputs=_resolve(self.official_outputs), data_files=_resolve(self.data_files))


_SPECS = [
    AnalysisSpec(
        "attention_basics",
        "Per-head mean attention on the first token (sink mass) and mean attention entropy on short texts",
        run="interp.analyses.basic:run", params="interp.analyses.basic:BasicParams",
        data_files="interp.analyses.basic:data_files"),
    AnalysisSpec(
        "sinks", "Attention-sink heads: Sink_1^eps of Gu et al. 2025 on prose, random and repeated tokens, with "
        "streaming, hidden, secondary sinks, extreme tokens (+ active/dormant heads, removal check: opt-in parts)",
        run="interp.analyses.sinks:run", params="interp.analyses.sinks:SinksParams",
        data_files="interp.analyses.sinks:data_files"),
    AnalysisSpec(
        "taxonomy", "Previous-token, duplicate-token and induction head scores (TransformerLens head_detector), "
        "the induction ablation check and WAAD/FAI",
        run="interp.analyses.head_detector:run", params="interp.analyses.head_detector:TaxonomyParams",
        data_files="interp.analyses.sinks:data_files"),
    AnalysisSpec(
        "retrieval", "Retrieval heads on a needle-in-a-haystack grid (Wu et al. 2024); official JSON output",
        run="interp.analyses.retrieval:run", params="interp.analyses.retrieval:RetrievalParams",
        official_outputs="interp.analyses.retrieval:write_official",
        data_files="interp.analyses.retrieval:data_files", in_default=False),
    AnalysisSpec(
        "safety", "Safety heads: Ships, Sahara and the refusal check (Zhou et al. 2025)",
        run="interp.analyses.refusal:run", params="interp.analyses.refusal:SafetyParams",
        data_files="interp.analyses.refusal:data_files", in_default=False),
    AnalysisSpec(
        "divergence", "Context-aware head divergence on the needle prompts (text analogue of VHD, He et al. 2025)",
        run="interp.analyses.head_divergence:run", params="interp.analyses.head_divergence:DivergenceParams"),
    AnalysisSpec(
        "model_divergence", "Model-vs-model head divergence (output distance, attention JS) against a second "
        "model (param model_b) or the same model with heads ablated (param ablate)",
        run="interp.analyses.model_divergence:run", params="interp.analyses.model_divergence:ModelDivergenceParams",
        data_files="interp.analyses.sinks:data_files", in_default=False),
    AnalysisSpec(
        "vhd", "Vision-aware head divergence VHD / T-VHD (He et al. 2025); needs a LLaVA-style model",
        run="interp.analyses.vhd:run", params="interp.analyses.vhd:VhdParams", in_default=False),
    AnalysisSpec(
        "duo_attention", "DuoAttention gates per KV head (Xiao et al. 2024), trained on synthetic passkeys; "
        "official TSV output",
        run="interp.analyses.duo_attention:run", params="interp.analyses.duo_attention:DuoParams",
        official_outputs="interp.analyses.duo_attention:write_official",
        data_files="interp.analyses.retrieval:data_files", in_default=False),
    AnalysisSpec(
        "composition", "Weight-space Q/K/V composition between heads (Elhage et al. 2021), GQA-native, random "
        "baseline subtracted; OV copying score, QK token and RoPE-frequency structure",
        run="interp.analyses.composition:run", params="interp.analyses.composition:CompositionParams",
        in_default=False),
    AnalysisSpec(
        "span_scaling", "Attention span and recent-window mass per head vs context length (512 → 8192), elastic "
        "fit S_h(N) = α_h + β_h N (MoA, Fu et al. 2024; LongHeads)",
        run="interp.analyses.span_scaling:run", params="interp.analyses.span_scaling:SpanScalingParams",
        data_files="interp.analyses.sinks:data_files", in_default=False),
    AnalysisSpec(
        "head_similarity", "Head similarity: pairwise attention JS (two-run divergence kernel), EchoAtt cross-layer "
        "similarity, HyLRA top-k overlap, ProxyAttn pooled proxy heads, average-linkage clusters",
        run="interp.analyses.head_similarity:run", params="interp.analyses.head_similarity:HeadSimilarityParams",
        data_files="interp.analyses.sinks:data_files", in_default=False),
    AnalysisSpec(
        "heterogeneity", "Semantic heterogeneity (Task-KV, He et al. 2025): each head's output distance from its "
        "layer's mean head output at the answer position of the needle QA prompts",
        run="interp.analyses.heterogeneity:run", params="interp.analyses.heterogeneity:HeterogeneityParams",
        data_files="interp.analyses.retrieval:data_files"),
    AnalysisSpec(
        "attention_saliency", "Attention × gradient saliency per head (MoA attention influence, Fu et al. 2024) "
        "in key tiles through the head-output identity (no n×n): total, long-range (> W) and sink shares",
        run="interp.analyses.attention_saliency:run", params="interp.analyses.attention_saliency:SaliencyParams",
        data_files="interp.analyses.sinks:data_files", in_default=False),
]

_SPECS += [
    AnalysisSpec(
        "zerotuning", "ZeroTuning (Han et al. 2025): per-head γ sweep of first-token attention, consistent-sign "
        "head selection, supervised / unsupervised γ; accuracy vs random heads on the calibration sets",
        run="interp.analyses.zerotuning:run", params="interp.analyses.zerotuning:ZeroTuningParams",
        data_files="interp.analyses.zerotuning:data_files", in_default=False),
    AnalysisSpec(
        "act", "ACT (Yu et al. 2024): hidden-sink attention calibration with greedy head selection; accuracy vs "
        "random heads on the calibration sets",
        run="interp.analyses.act:run", params="interp.analyses.act:ActParams",
        data_files="interp.analyses.act:data_files", in_default=False),
    AnalysisSpec(
        "attention_redistribution", "VAR (Kang et al. 2025) on text: sink attention redistributed onto a marked "
        "passage in the heads that attend to it; context-QA accuracy vs random heads",
        run="interp.analyses.attention_redistribution:run",
        params="interp.analyses.attention_redistribution:RedistributionParams",
        data_files="interp.analyses.attention_redistribution:data_files", in_default=False),
    AnalysisSpec(
        "context_attention", "Per-head attention on a marked context with vs without the chat template, and "
        "steering the heads that lose it (context-awareness loss after instruction tuning)",
        run="interp.analyses.context_attention:run", params="interp.analyses.context_attention:ContextAttentionParams",
        data_files="interp.analyses.context_attention:data_files", in_default=False),
]

_SPECS += [
    AnalysisSpec(
        "circuits", "Circuit heads on a task (IOI, Colored Objects, numeric comparison or a task file): EAP and "
        "EAP-IG node scores (each head's out-edges) and activation patching of each head's z",
        run="interp.analyses.circuit_heads:run", params="interp.analyses.circuit_heads:CircuitsParams",
        data_files="interp.analyses.circuit_heads:data_files", in_default=False),
]

REGISTRY: dict[str, AnalysisSpec] = {s.name: s for s in _SPECS}


def register(spec: AnalysisSpec, *, replace_existing: bool = False) -> AnalysisSpec:
    """Add an analysis at run time (plugins, tests)."""
    if spec.name in REGISTRY and not replace_existing:
        raise ValueError(f"analysis {spec.name!r} is already registered; pass replace_existing=True")
    REGISTRY[spec.name] = spec
    return spec


def available() -> dict[str, AnalysisSpec]:
    """Registered analyses whose modules are installed, in registration order."""
    return {n: s for n, s in REGISTRY.items() if s.available()}


def default() -> list[str]:
    """The analyses ``interp report`` runs when none are named: available ones with ``in_default``."""
    return [n for n, s in available().items() if s.in_default]


def unavailable() -> dict[str, AnalysisSpec]:
    return {n: s for n, s in REGISTRY.items() if not s.available()}


def get(name: str) -> AnalysisSpec:
    """The loaded spec of ``name``; ``KeyError`` with the list of valid names if it is unknown."""
    if name not in REGISTRY:
        raise KeyError(f"unknown analysis {name!r}; available: {', '.join(available()) or '(none)'}")
    return REGISTRY[name].load()
