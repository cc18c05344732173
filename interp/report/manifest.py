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


def portable_path(path, out=None) -> str:
    """A path as the manifest records it: ``builtin:``/non-paths unchanged; inside the installed ``interp``
    package relative to it (``interp/...``); else relative to the report folder ``out`` (so the folder can move
    with its inputs and no user's home directory is written down)."""
    import os
    from pathlib import Path

    import interp

    s = str(path)
    if s.startswith("builtin:") or "://" in s:
        return s
    p = Path(os.path.expanduser(s)).resolve()
    pkg = Path(interp.__file__).resolve().parent
    if pkg in p.parents:
        return "interp/" + str(p.relative_to(pkg))
    return os.path.relpath(p, Path(out).resolve()) if out is not None else p.name


def build_manifest(*, model, analyses, params, seed, timings, data_files, official, tables, command,
                   extra_timings=None, out=None) -> dict:
    """The manifest dict; paths (data files, a model file, argv[0]) are recorded by ``portable_path`` (data
    files keep their sha256)."""
    import os

    data_files = [dict(d, path=portable_path(d["path"], out)) if d.get("path") else d for d in data_files]
    source = getattr(model, "source", None)
    if isinstance(source, str) and os.path.exists(os.path.expanduser(source)):
        source = portable_path(source, out)
    argv = list(sys.argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    return {
        "model": model.name,
        "model_source": source,
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
        "argv": argv,
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
