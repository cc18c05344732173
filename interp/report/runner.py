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
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import io
from . import folder
from .config import ReportError, check_options, load_config  # noqa: F401  (load_config: public via interp.report)
from .manifest import interp_version

PARTS = "parts"


class AnalysisFailed(RuntimeError):
    """An analysis raised; finished parts are kept. ``kind`` says whether a rerun can help: ``"transient"``
    (interrupted, out of memory, I/O: a rerun resumes), ``"input"`` (the analysis rejected its input: change
    the parameters) or ``"bug"`` (any other exception: a rerun fails the same way)."""

    def __init__(self, message: str, kind: str = "transient"):
        super().__init__(message)
        self.kind = kind


@dataclass
class ReportResult:
    out: Path
    scores: pd.DataFrame
    manifest: dict
    computed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)


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


def _prepare_out(out: Path, model_name: str, *, force: bool) -> tuple[dict | None, bool]:
    """Create/check the output folder; return the previous run.json (or None) and whether ``--force`` is to
    replace it (done by the caller once every input check has passed). Raises ``ReportError``."""
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
    elif any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise ReportError(f"output folder {out} is not empty and is not an interp report folder; choose an "
                          "empty --out (--force replaces interp's own files only, never a folder's other files)")
    if prev is not None:
        why = []
        if prev.get("model") != model_name:
            why.append(f"model {prev.get('model')!r}, not {model_name!r}")
        if prev.get("interp_version") != interp_version():
            why.append(f"interp {prev.get('interp_version')}, not {interp_version()}")
        if why:
            if not force:
                raise ReportError(f"output folder {out} holds a run of {' and '.join(why)}; "
                                  "choose another --out or pass --force to replace it")
            return None, True
    return prev, False


def _clear_run(out: Path) -> None:
    folder.clear_own(out)  # interp's own files only (run.json, manifest.json, what the manifest lists, parts)


def params_hash(analysis: str, params: dict, seed: int, model) -> str:
    blob = json.dumps({"analysis": analysis, "params": params, "seed": seed, "model": model.name,
                       "weights_hash": model.weights_hash, "interp": interp_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def analysis_params(spec, overrides: dict | None, n_tokens: int | None):
    """The analysis's typed parameters: defaults ← config ``[params.<analysis>]`` ← ``--n-tokens`` (for
    analyses with an ``n_tokens`` field), validated; a bad key or value raises ``ReportError`` (one line)."""
    from interp.params import ParamError

    where = f"params.{spec.name}"
    try:
        p = spec.params.from_dict(overrides or {}, where=where)
        if n_tokens is not None and "n_tokens" in spec.params.keys():
            p = p.replace(n_tokens=n_tokens)
        return p.validate(where)
    except ParamError as e:
        raise ReportError(str(e)) from None


def check_model_params(model, per_params: dict) -> None:
    """The checks that need the loaded model (context length, model kind), for every analysis, before any runs."""
    from interp.params import ParamError

    for name, p in per_params.items():
        try:
            p.check_model(model, f"params.{name}")
        except ParamError as e:
            raise ReportError(str(e)) from None
    _check_memory_plan(model, per_params)


def _check_memory_plan(model, per_params: dict) -> None:
    """Each analysis's forward at its ``n_tokens`` × ``batch_size`` against the memory plan (``interp.plan``),
    before any analysis runs (a model served by workers is checked there, at its first forward)."""
    from interp.model import Model
    from interp.plan import PlanError, check_run

    if not isinstance(model, Model):
        return
    for name, p in per_params.items():
        n, b = getattr(p, "n_tokens", None), getattr(p, "batch_size", None) or 1
        if isinstance(n, int) and not isinstance(n, bool) and n > 0 and isinstance(b, int):
            try:
                check_run(model, n, b, analyses=[name])
            except PlanError as e:
                raise ReportError(f"params.{name}: {e}") from None


def _load_part(parts: Path, name: str, h: str):
    from interp.scores import ScoreTable

    meta_path = parts / f"{name}.json"
    if not meta_path.exists():
        return None
    meta = io.read_json(meta_path)
    files = {t: parts / f"{name}.{t}.parquet" for t in meta.get("tables", [])}
    if meta.get("params_hash") != h or "scores" not in files or not all(f.exists() for f in files.values()):
        return None
    tables = {t: pd.read_parquet(f) for t, f in files.items()}
    tables["scores"] = ScoreTable.validate(ScoreTable.with_level(tables["scores"]))  # parts from before `level`
    return meta, tables


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


def failure_kind(e: BaseException) -> str:
    """``"input"`` (a rerun with the same parameters fails the same way: the analysis rejected its input),
    ``"transient"`` (a rerun may succeed: memory, I/O, interruption, runtime errors) or ``"bug"``."""
    from interp.registry import ModelNotAvailableError

    if isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                      ModelNotAvailableError)):
        return "input"
    if isinstance(e, (RuntimeError, OSError, MemoryError)):
        return "transient"
    return "bug"


def _call(spec, model, params, out: Path) -> dict:
    """``spec.run`` with its result checked; any failure becomes ``AnalysisFailed`` with its kind."""
    try:
        results = spec.run(model, params, out)
    except Exception as e:
        raise AnalysisFailed(f"analysis {spec.name!r} failed: {type(e).__name__}: {e}", failure_kind(e)) from e
    return checked_results(spec, results, model.shape)


def checked_results(spec, results, shape) -> dict:
    """``results`` of ``spec`` with its score table validated against ``shape``; else ``AnalysisFailed``."""
    from interp.scores import ScoreTable, ScoreTableError

    if not isinstance(results, dict) or "scores" not in results:
        raise AnalysisFailed(f"analysis {spec.name!r} returned {type(results).__name__} without 'scores'; "
                             "run() must return a dict of DataFrames with a 'scores' table", "bug")
    results = dict(results)
    try:
        results["scores"] = ScoreTable.validate(results["scores"], shape=shape)
    except ScoreTableError as e:
        raise AnalysisFailed(f"analysis {spec.name!r} returned an invalid score table: {e}", "bug") from e
    return results


def _run_one(spec, model, params, seed, out: Path, h: str):
    import torch

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    results = _call(spec, model, params, out)
    return write_part(spec, params, out, h, results, time.perf_counter() - t0)


def write_part(spec, params, out: Path, h: str, results: dict, seconds: float):
    """Write one analysis's tables, official outputs and (last: it marks the part complete) its .json."""
    parts = out / PARTS
    for table, df in results.items():
        io.write_parquet(parts / f"{spec.name}.{table}.parquet", df)
    official = []
    if spec.official_outputs is not None:
        off_dir = out / "official" / spec.name
        off_dir.mkdir(parents=True, exist_ok=True)
        written = spec.official_outputs(results, params, off_dir) or []
        official = [str(Path(p).relative_to(out)) if out.resolve() in Path(p).resolve().parents else str(p)
                    for p in written]
    meta = {"analysis": spec.name, "params": params.to_dict(), "params_hash": h, "seconds": round(seconds, 3),
            "tables": sorted(results), "official": official}
    io.write_json(parts / f"{spec.name}.json", meta)  # written last: marks the part complete
    return meta, results


def _load_model(model, out: Path, created: bool):
    """The loaded model (a spec string is loaded here); a failure removes the ``out`` folder this run made."""
    if not isinstance(model, str):
        return model
    from interp import load_model

    try:
        return load_model(model)
    except Exception as e:  # ModelNotAvailableError, bad spec
        _remove_if_new(out, created)
        raise ReportError(f"cannot load model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _remove_if_new(out: Path, created: bool) -> None:
    if created:
        try:
            out.rmdir()  # only if still empty
        except OSError:
            pass


def _write_tables(out: Path, names, parts) -> tuple[pd.DataFrame, list[str]]:
    """scores.parquet/csv, per_token.parquet and tables/*; returns the score table and the extra tables."""
    from interp.scores import ScoreTable

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
    return scores, extra


def _check_args(model, analyses, out, params, n_tokens, seed, top_k, resume) -> None:
    opts = {"analyses": analyses, "out": out, "params": params, "n_tokens": n_tokens, "seed": seed,
            "top_k": top_k, "resume": resume}
    if isinstance(model, str) or model is None:
        opts["model"] = model if model is not None else ""
    check_options(opts)


def _prepare_params(names, specs, params, n_tokens) -> dict:
    per_params = {n: analysis_params(specs[n], (params or {}).get(n), n_tokens) for n in names}
    unknown_params = sorted(set(params or {}) - set(names))
    if unknown_params:
        raise ReportError(f"parameters given for analyses not in this run: {unknown_params}; "
                          f"this run has {', '.join(names)}")
    return per_params


def _render_page(model, scores, roles, params, *, top_k, static, n_tokens, executor=None) -> str:
    """report.html: the head atlas with the example text's top-k attention (at the run's ``n_tokens``, else
    ``example.DEFAULT_TOKENS``), or the static page."""
    if static:
        from .html import render_report

        return render_report(scores, model_name=model.name, shape=model.shape, params=params, top_k=top_k)
    from .atlas import render_atlas
    from .example import DEFAULT_TOKENS, build_example

    n = n_tokens or DEFAULT_TOKENS
    example = build_example(model, n) if executor is None else executor.call(build_example, n)  # on a replica
    return render_atlas(scores, roles, model_name=model.name, shape=model.shape, params=params, example=example)


def run_report(model="default", analyses=None, out="reports/run", *, params: dict | None = None,
               n_tokens: int | None = None, seed: int = 0, resume: bool = True, force: bool = False,
               top_k: int = 10, command: list[str] | None = None, progress: bool = True,
               static: bool = False, ray: str | None = None, workers: int = 2,
               worker_resources: dict | None = None) -> ReportResult:
    """Run ``analyses`` (names; ``None`` = all available) on ``model`` (a spec string or a loaded
    ``interp.Model``) and write the report folder ``out``. Returns the scores and the manifest.

    ``params`` maps analysis name → parameter overrides (a dict, as in ``[params.<analysis>]``). Every option
    and parameter is checked before the model loads, the checks that need the model (context length) before
    any analysis runs; bad input raises ``ReportError``; ``AnalysisFailed`` when an analysis raises (its
    finished predecessors are kept for resuming). ``report.html`` is the head atlas (``interp.report.atlas``);
    ``static=True`` writes the print-friendly page of one section per score instead (``interp.report.html``).

    ``ray``: run the analyses' work units on Ray (``interp.distributed``): ``"local"`` starts a loopback
    cluster for this run, ``"auto"`` / ``HOST:PORT`` / ``ray://HOST:PORT`` join one; ``workers`` model
    replicas with ``worker_resources`` ``{"num_cpus": 1, "num_gpus": 0}`` each. The folder is the same as a
    local run's; finished units are checkpointed in ``parts/<analysis>.units.jsonl``; the manifest gains
    ``cluster`` (nodes, replicas, resources, per-unit timings).
    """
    executor = None
    if ray is not None:
        from interp.distributed import report_executor

        executor = report_executor(model, ray, workers, worker_resources)
    try:
        return _run_report(model, analyses, out, params=params, n_tokens=n_tokens, seed=seed, resume=resume,
                           force=force, top_k=top_k, command=command, progress=progress, static=static,
                           executor=executor)
    finally:
        if executor is not None:
            executor.close()


def _run_report(model, analyses, out, *, params, n_tokens, seed, resume, force, top_k, command, progress,
                static, executor) -> ReportResult:

    from interp.analyses import registry

    t_start = time.perf_counter()
    _check_args(model, analyses, out, params, n_tokens, seed, top_k, resume)
    out = Path(out)
    if isinstance(analyses, str):
        analyses = [a.strip() for a in analyses.split(",") if a.strip()]
    names = resolve_analyses(analyses)
    specs = {n: registry.get(n) for n in names}
    per_params = _prepare_params(names, specs, params, n_tokens)
    model_name = model.name if not isinstance(model, str) else expected_model_name(model)
    created = not out.exists()
    if out.exists() and not out.is_dir():
        raise ReportError(f"output path {out} exists and is not a folder")
    try:
        held = folder.lock(out)  # one writer for the whole run
    except OSError as e:
        raise ReportError(f"output folder {out} is not writable ({e.strerror or e}); choose another --out") from None
    except ReportError:
        _remove_if_new(out, created)
        raise
    try:
        return _run_locked(model, model_name, names, specs, per_params, out, created, t_start, seed=seed,
                           resume=resume, force=force, top_k=top_k, command=command, progress=progress,
                           static=static, n_tokens=n_tokens, executor=executor)
    finally:
        held.release()
        _remove_if_new(out, created)  # a new folder that is still empty (the model failed to load)


def _run_locked(model, model_name, names, specs, per_params, out, created, t_start, *, seed, resume, force,
                top_k, command, progress, static, n_tokens, executor) -> ReportResult:
    from tqdm.auto import tqdm

    prev, replace = _prepare_out(out, model_name, force=force)
    t0 = time.perf_counter()
    model = _load_model(model, out, created) if executor is None else executor.start_for_report(out, created)
    load_seconds = time.perf_counter() - t0
    check_model_params(model, per_params)
    if replace:  # --force over a run of another model / interp version: only now that every check passed
        _clear_run(out)
    if prev is not None and prev.get("weights_hash") != model.weights_hash:
        if not force:
            raise ReportError(f"output folder {out} holds a run of {prev.get('model')!r} with weights "
                              f"{prev.get('weights_hash')}, not {model.weights_hash}; choose another --out "
                              "or pass --force to replace it")
        _clear_run(out)
    if not resume:  # recompute this run's analyses; other analyses' parts stay
        folder.clear_own(out, names)
    previous = io.read_json(out / "manifest.json") if (out / "manifest.json").is_file() else {}
    io.write_json(out / "run.json", {"model": model.name, "weights_hash": model.weights_hash,
                                     "interp_version": interp_version()})

    parts, timings, data, computed, resumed, official = {}, {}, [], [], [], {}
    bar = tqdm(names, desc="analyses", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        spec, p = specs[name], per_params[name]
        h = params_hash(name, p.to_dict(), seed, model)
        loaded = _load_part(out / PARTS, name, h) if resume else None
        if loaded is not None:
            meta, results = loaded
            resumed.append(name)
        else:
            meta, results = (_run_one(spec, model, p, seed, out, h) if executor is None
                             else executor.run_part(spec, p, seed, out, h, resume=resume))
            computed.append(name)
        parts[name] = results
        timings[name] = {"seconds": meta["seconds"], "resumed": loaded is not None}
        official[name] = meta.get("official", [])
        data += _data_entries(spec, p)
    bar.close()
    plain = {n: p.to_dict() for n, p in per_params.items()}
    seeds = {n: seed for n in names}
    others = folder.other_parts(out, names, previous.get("analyses", []))
    for name in others:  # the folder is the union of the analyses run into it
        meta = folder.part_meta(out, name)
        parts[name] = {t: pd.read_parquet(out / PARTS / f"{name}.{t}.parquet") for t in meta["tables"]}
        timings[name] = {"seconds": meta.get("seconds"), "resumed": True, "earlier_run": True}
        official[name] = meta.get("official", [])
        plain[name], seeds[name] = meta.get("params", {}), previous.get("seeds", {}).get(name, previous.get("seed"))
        data += [d for d in previous.get("data_files", []) if d.get("analysis") == name]
    own_before = folder.own_files(out)
    scores, extra = _write_tables(out, names + others, parts)
    folder.prune_tables(out, extra, own_before)
    from .roles import assign_roles

    roles = assign_roles(scores, model.shape)
    io.write_parquet(out / "roles.parquet", roles)

    t0 = time.perf_counter()
    io.write_html(out / "report.html", _render_page(model, scores, roles, plain, top_k=top_k, static=static,
                                                    n_tokens=n_tokens, executor=executor))
    html_seconds = time.perf_counter() - t0
    from .manifest import build_manifest

    manifest = build_manifest(
        model=model, analyses=names + others, params=plain, seed=seed, timings=timings, data_files=data,
        official=official, tables=extra, command=command if command is not None else sys.argv,
        extra_timings={"load_model": round(load_seconds, 3), "report_html": round(html_seconds, 3),
                       "total": round(time.perf_counter() - t_start, 3)}, out=out)
    manifest["seeds"] = seeds
    manifest["files"] = sorted({f for n in names + others for f in folder.part_files(out, n)}
                               | {f for f in folder.TOP_FILES if (out / f).is_file()} | set(extra)
                               | {"manifest.json"})
    if executor is not None:
        manifest["cluster"] = executor.summary()
    io.write_json(out / "manifest.json", manifest)
    return ReportResult(out=out, scores=scores, manifest=manifest, computed=computed, resumed=resumed)
