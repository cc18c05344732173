"""``run_report``: run registered analyses on one model, resumably, and write the report folder.

Layout of ``<out>``::

    run.json                      model + interp version (written first; guards against mixing runs)
    parts/<analysis>.<table>.parquet, parts/<analysis>.json   one analysis's results; the .json (params hash,
                                  timing, tables) is written last and marks the part complete
    official/<analysis>/...       published formats, where an analysis provides them
    scores.parquet, scores.csv    all analyses' score tables (tidy, ``interp.scores`` columns)
    per_token.parquet             all per-token tables;  tables/<analysis>.<name>.parquet  any other tables
    report.html                   self-contained page (``interp.report.html``);  manifest.json  provenance

Resume: a part whose params hash (analysis, params, seed, model, weights hash, interp version) matches is
loaded instead of recomputed. Every write is atomic (``interp.io``). Tested end to end in
``tests/integration/test_cli.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import io

PARTS = "parts"


class ReportError(Exception):
    """Bad input to a report run (message is one line meant for the user; the CLI exits with code 2)."""


class AnalysisFailed(RuntimeError):
    """An analysis raised; finished parts are kept and a rerun resumes after them."""


@dataclass
class ReportResult:
    out: Path
    scores: pd.DataFrame
    manifest: dict
    computed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


def load_config(path) -> dict:
    """Read a TOML config (keys: model, analyses, out, seed, n_tokens, resume, top_k, [params.<analysis>])."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"config file {path} does not exist")
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ReportError(f"config file {path} is not valid TOML: {e}") from None
    known = {"model", "analyses", "out", "seed", "n_tokens", "resume", "top_k", "params"}
    bad = sorted(set(cfg) - known)
    if bad:
        raise ReportError(f"config file {path}: unknown keys {bad}; valid keys: {sorted(known)}")
    if isinstance(cfg.get("analyses"), str):
        cfg["analyses"] = [a.strip() for a in cfg["analyses"].split(",") if a.strip()]
    return cfg


def expected_model_name(spec: str) -> str:
    """The ``Model.name`` that ``load_model(spec)`` will produce, computed without loading anything."""
    from interp.registry import resolve_packaged

    if spec.startswith("tiny-"):
        return spec
    packaged = resolve_packaged(spec)
    if packaged is not None:
        return packaged.name
    p = Path(os.path.expanduser(spec))
    return p.stem if p.suffix == ".gguf" else spec.rstrip("/").split("/")[-1]


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    names = ["interp", "torch", "transformers", "transformer_lens", "nnsight", "numpy", "pandas", "plotly"]
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            try:
                out[name] = version(name.replace("_", "-"))
            except PackageNotFoundError:
                out[name] = None
    return out


def _interp_version() -> str:
    import interp

    return interp.__version__


def resolve_analyses(names) -> list[str]:
    """Validate analysis names (``None`` = ``registry.default()``); unknown names raise ``ReportError``."""
    from interp.analyses import registry

    if names is None or len(names) == 0:
        for n, s in registry.unavailable().items():
            print(f"note: skipping analysis {n!r}: its module {', '.join(s.modules())} is not installed",
                  file=sys.stderr)
        names = registry.default()
        if not names:
            raise ReportError("no analyses are available")
        return names
    unknown = [n for n in names if n not in registry.REGISTRY]
    if unknown:
        raise ReportError(f"unknown analysis {', '.join(map(repr, unknown))}; "
                          f"available: {', '.join(registry.available()) or '(none)'}")
    missing = [n for n in names if not registry.REGISTRY[n].available()]
    if missing:
        raise ReportError(f"analysis {', '.join(map(repr, missing))} is registered but its module is not "
                          f"installed; available: {', '.join(registry.available())}")
    if len(set(names)) != len(names):
        raise ReportError(f"analysis listed twice in {names}")
    return list(names)


def _prepare_out(out: Path, model_name: str, *, force: bool) -> dict | None:
    """Create/check the output folder; return the previous run.json (or None). Raises ``ReportError``."""
    if out.exists() and not out.is_dir():
        raise ReportError(f"output path {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ReportError(f"output folder {out} is not writable ({e.strerror or e}); "
                          "choose another --out") from None
    prev = None
    if (out / "run.json").exists():
        prev = io.read_json(out / "run.json")
    elif (out / "manifest.json").exists():
        prev = io.read_json(out / "manifest.json")
    elif any(p for p in out.iterdir() if not p.name.startswith(".")) and not force:
        raise ReportError(f"output folder {out} is not empty and is not an interp report folder; "
                          "choose an empty --out or pass --force to write into it")
    if prev is not None:
        why = []
        if prev.get("model") != model_name:
            why.append(f"model {prev.get('model')!r}, not {model_name!r}")
        if prev.get("interp_version") != _interp_version():
            why.append(f"interp {prev.get('interp_version')}, not {_interp_version()}")
        if why:
            if not force:
                raise ReportError(f"output folder {out} holds a run of {' and '.join(why)}; "
                                  "choose another --out or pass --force to replace it")
            _clear_run(out)
            prev = None
    return prev


def _clear_run(out: Path) -> None:
    for name in [PARTS, "official", "tables"]:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for name in ["run.json", "manifest.json", "scores.parquet", "scores.csv", "per_token.parquet",
                 "report.html"]:
        if (out / name).exists():
            (out / name).unlink()


def params_hash(analysis: str, params: dict, seed: int, model) -> str:
    blob = json.dumps({"analysis": analysis, "params": params, "seed": seed, "model": model.name,
                       "weights_hash": model.weights_hash, "interp": _interp_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def analysis_params(spec, overrides: dict | None, n_tokens: int | None) -> dict:
    """Defaults ← config ``[params.<analysis>]`` ← ``--n-tokens`` (for analyses that take ``n_tokens``)."""
    params = dict(spec.default_params)
    bad = sorted(set(overrides or {}) - set(params))
    if bad:
        raise ReportError(f"unknown parameter {', '.join(bad)} for analysis {spec.name!r}; "
                          f"valid: {', '.join(sorted(params)) or '(none)'}")
    params.update(overrides or {})
    if n_tokens is not None and "n_tokens" in params:
        params["n_tokens"] = int(n_tokens)
    return params


def _load_part(parts: Path, name: str, h: str):
    meta_path = parts / f"{name}.json"
    if not meta_path.exists():
        return None
    meta = io.read_json(meta_path)
    files = {t: parts / f"{name}.{t}.parquet" for t in meta.get("tables", [])}
    if meta.get("params_hash") != h or "scores" not in files or not all(f.exists() for f in files.values()):
        return None
    return meta, {t: pd.read_parquet(f) for t, f in files.items()}


def _data_entries(spec, params) -> list[dict]:
    from interp.registry import sha256_file

    if spec.data_files is None:
        return []
    out = []
    for item in spec.data_files(params) or []:
        entry = dict(item) if isinstance(item, dict) else {"path": str(item)}
        if "sha256" not in entry:
            p = Path(entry["path"])
            entry["sha256"] = sha256_file(p) if p.is_file() else None
        entry["analysis"] = spec.name
        out.append(entry)
    return out


def _run_one(spec, model, params, seed, out: Path, h: str):
    import torch

    from interp.scores import ScoreTable

    parts = out / PARTS
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        results = spec.run(model, params, out)
    except Exception as e:
        raise AnalysisFailed(f"analysis {spec.name!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(results, dict) or "scores" not in results:
        raise AnalysisFailed(f"analysis {spec.name!r} returned {type(results).__name__} without 'scores'; "
                             "run() must return a dict of DataFrames with a 'scores' table")
    results = dict(results)
    results["scores"] = ScoreTable.validate(results["scores"])
    seconds = time.perf_counter() - t0
    for table, df in results.items():
        io.write_parquet(parts / f"{spec.name}.{table}.parquet", df)
    official = []
    if spec.official_outputs is not None:
        off_dir = out / "official" / spec.name
        off_dir.mkdir(parents=True, exist_ok=True)
        written = spec.official_outputs(results, params, off_dir) or []
        official = [str(Path(p).relative_to(out)) if out.resolve() in Path(p).resolve().parents else str(p)
                    for p in written]
    meta = {"analysis": spec.name, "params": params, "params_hash": h, "seconds": round(seconds, 3),
            "tables": sorted(results), "official": official}
    io.write_json(parts / f"{spec.name}.json", meta)  # written last: marks the part complete
    return meta, results


def run_report(model="default", analyses=None, out="reports/run", *, params: dict | None = None,
               n_tokens: int | None = None, seed: int = 0, resume: bool = True, force: bool = False,
               top_k: int = 10, command: list[str] | None = None, progress: bool = True) -> ReportResult:
    """Run ``analyses`` (names; ``None`` = all available) on ``model`` (a spec string or a loaded
    ``interp.Model``) and write the report folder ``out``. Returns the scores and the manifest.

    ``params`` maps analysis name → parameter overrides. Raises ``ReportError`` for bad input and
    ``AnalysisFailed`` when an analysis raises (its finished predecessors are kept for resuming).
    """
    from tqdm.auto import tqdm

    from interp.analyses import registry
    from interp.scores import ScoreTable

    t_start = time.perf_counter()
    out = Path(out)
    names = resolve_analyses(analyses)
    specs = {n: registry.get(n) for n in names}
    per_params = {n: analysis_params(specs[n], (params or {}).get(n), n_tokens) for n in names}
    unknown_params = sorted(set(params or {}) - set(names))
    if unknown_params:
        raise ReportError(f"parameters given for analyses not in this run: {unknown_params}")
    model_name = model.name if not isinstance(model, str) else expected_model_name(model)
    prev = _prepare_out(out, model_name, force=force)
    t0 = time.perf_counter()
    if isinstance(model, str):
        from interp import load_model

        try:
            model = load_model(model)
        except Exception as e:  # ModelNotAvailableError, bad spec
            raise ReportError(f"cannot load model: {str(e).splitlines()[0]}") from None
    load_seconds = time.perf_counter() - t0
    if prev is not None and prev.get("weights_hash") != model.weights_hash:
        if not force:
            raise ReportError(f"output folder {out} holds a run of {prev.get('model')!r} with weights "
                              f"{prev.get('weights_hash')}, not {model.weights_hash}; choose another --out "
                              "or pass --force to replace it")
        _clear_run(out)
    if not resume and (out / PARTS).is_dir():
        shutil.rmtree(out / PARTS)
    io.write_json(out / "run.json", {"model": model.name, "weights_hash": model.weights_hash,
                                     "interp_version": _interp_version()})

    parts, timings, data, computed, resumed, official = {}, {}, [], [], [], {}
    bar = tqdm(names, desc="analyses", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        spec, p = specs[name], per_params[name]
        h = params_hash(name, p, seed, model)
        loaded = _load_part(out / PARTS, name, h) if resume else None
        if loaded is not None:
            meta, results = loaded
            resumed.append(name)
        else:
            meta, results = _run_one(spec, model, p, seed, out, h)
            computed.append(name)
        parts[name] = results
        timings[name] = {"seconds": meta["seconds"], "resumed": loaded is not None}
        official[name] = meta.get("official", [])
        data += _data_entries(spec, p)
    bar.close()

    scores = ScoreTable.concat([parts[n]["scores"] for n in names])
    io.write_parquet(out / "scores.parquet", scores)
    io.write_csv(out / "scores.csv", scores)
    per_token = [parts[n]["per_token"].assign(analysis=n) for n in names if "per_token" in parts[n]]
    if per_token:
        table = pd.concat(per_token, ignore_index=True)
        # analyses may use one column name for str and int values: store such columns as str
        for col in [c for c in table.columns if pd.api.types.is_object_dtype(table[c])]:
            table[col] = table[col].map(lambda v: v if v is None or isinstance(v, str) else str(v))
        io.write_parquet(out / "per_token.parquet", table)
    extra = []
    for n in names:
        for table, df in parts[n].items():
            if table not in ("scores", "per_token"):
                path = io.write_parquet(out / "tables" / f"{n}.{table}.parquet", df)
                extra.append(str(path.relative_to(out)))

    from .html import render_report

    t0 = time.perf_counter()
    io.write_html(out / "report.html", render_report(scores, model_name=model.name, shape=model.shape,
                                                     params=per_params, top_k=top_k))
    html_seconds = time.perf_counter() - t0
    from .manifest import build_manifest

    manifest = build_manifest(
        model=model, analyses=names, params=per_params, seed=seed, timings=timings, data_files=data,
        official=official, tables=extra, command=command if command is not None else sys.argv,
        extra_timings={"load_model": round(load_seconds, 3), "report_html": round(html_seconds, 3),
                       "total": round(time.perf_counter() - t_start, 3)})
    io.write_json(out / "manifest.json", manifest)
    return ReportResult(out=out, scores=scores, manifest=manifest, computed=computed, resumed=resumed)
