"""``manifest.json``: what produced a report — model and weight hash, package versions, data files with
sha256, parameters, seed, timings per analysis, command line. Tested in ``tests/integration/test_cli.py``.
"""

from __future__ import annotations

import datetime as _dt
import platform
import sys

PACKAGES = ["interp", "torch", "transformers", "transformer_lens", "nnsight", "numpy", "pandas", "plotly"]


def interp_version() -> str:
    import interp

    return interp.__version__


def package_versions() -> dict:
    """Python and the versions of the packages a report depends on (``None`` when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            try:
                out[name] = version(name.replace("_", "-"))
            except PackageNotFoundError:
                out[name] = None
    return out


def build_manifest(*, model, analyses, params, seed, timings, data_files, official, tables, command,
                   extra_timings=None) -> dict:
    return {
        "model": model.name,
        "model_source": getattr(model, "source", None),
        "weights_hash": model.weights_hash,
        "shape": model.shape.asdict(),
        "interp_version": interp_version(),
        "packages": package_versions(),
        "platform": platform.platform(),
        "analyses": list(analyses),
        "params": params,
        "seed": seed,
        "data_files": data_files,
        "timings_s": {"analyses": timings, **(extra_timings or {})},
        "official_outputs": official,
        "tables": tables,
        "command": list(command),
        "argv": list(sys.argv),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
