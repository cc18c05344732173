"""The analysis registry: name → ``AnalysisSpec``, read by ``interp report`` and ``interp.report.run_report``.

Importing this module is cheap: an entry names its functions as ``"module:attribute"`` strings that are
imported only when the analysis runs (``spec.load()``). An entry whose module is not installed yet is listed
as unavailable and skipped with a message instead of breaking the report.

To add an analysis, append one ``AnalysisSpec`` to ``_SPECS`` below::

    AnalysisSpec("sinks", "Attention-sink heads (Xiao et al. 2023)", run="interp.analyses.sinks:run",
                 default_params="interp.analyses.sinks:DEFAULT_PARAMS",
                 official_outputs="interp.analyses.sinks:write_official")   # optional

Contract of ``run(model, params, out_dir) -> dict[str, pandas.DataFrame]``: key ``"scores"`` holds the tidy
score table of ``interp.scores`` (columns model, analysis, score, layer, head, value, n_samples);
``"per_token"`` (optional) holds per-token rows; other keys are kept as extra tables.
``official_outputs(results, params, out_dir) -> list[Path]`` writes published formats into ``out_dir``.
``data_files(params) -> list[str | Path | dict]`` (optional) names the data files read; the manifest records
each with its sha256 (a dict ``{"path", "sha256"}`` may give the hash of built-in data itself).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, replace


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
    default_params: dict | str = field(default_factory=dict)
    official_outputs: Callable | str | None = None
    data_files: Callable | str | None = None

    def modules(self) -> list[str]:
        refs = [self.run, self.default_params, self.official_outputs, self.data_files]
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
        params = _resolve(self.default_params)
        return replace(self, run=_resolve(self.run), default_params=dict(params or {}),
                       official_outputs=_resolve(self.official_outputs), data_files=_resolve(self.data_files))


_SPECS = [
    AnalysisSpec(
        "attention_basics",
        "Per-head mean attention on the first token (sink mass) and mean attention entropy on short texts",
        run="interp.analyses.basic:run", default_params="interp.analyses.basic:DEFAULT_PARAMS",
        data_files="interp.analyses.basic:data_files"),
    # other analyses (sinks, taxonomy, retrieval, safety, circuits) register here
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


def unavailable() -> dict[str, AnalysisSpec]:
    return {n: s for n, s in REGISTRY.items() if not s.available()}


def get(name: str) -> AnalysisSpec:
    """The loaded spec of ``name``; ``KeyError`` with the list of valid names if it is unknown."""
    if name not in REGISTRY:
        raise KeyError(f"unknown analysis {name!r}; available: {', '.join(available()) or '(none)'}")
    return REGISTRY[name].load()
