"""The ``interp`` command line: ``interp report``, ``interp analyses``, ``interp models``, ``interp compare``,
``interp plan``.

    interp report --model default --out reports/default              # every available analysis
    interp report --model tiny-llama --analyses attention_basics --out reports/runs/tiny --n-tokens 64
    interp report --config run.toml --seed 1                          # flags override the TOML file
    interp report -a sinks -p sinks.n_samples=20 -p sinks.streaming.n_tokens=512   # set typed parameters
    interp analyses --params                                          # every parameter, its type and range
    interp compare reports/runs/a reports/runs/b --out reports/compare/a_vs_b   # two reports, score by score
    interp plan --model default --tokens 8192 --analyses sinks        # expected peak memory per device

Bad input (unknown analysis or parameter, a value of the wrong type or out of range, unwritable folder, a
folder holding another model's run) prints one line and exits with code 2, before the model loads where it
can; an analysis that rejects its input exits 2 too (a rerun would fail the same way); an interrupted or
crashed analysis exits 1, and when a rerun can help the message says so (finished analyses resume).
Tested in ``tests/integration/test_cli.py`` and ``tests/integration/test_cli_params.py``.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Interpret attention heads: run analyses on a model and write a report.")


def _fail(msg: str, code: int = 2):
    typer.echo(f"Error: {msg}", err=True)
    raise typer.Exit(code)


def _opt_in() -> str:
    from interp.analyses.registry import REGISTRY  # cheap: names only, no analysis module is imported

    return ", ".join(n for n, s in REGISTRY.items() if not s.in_default) or "none"


def _analysis_failed(e, out_dir) -> None:
    kept = f"Finished analyses are kept in {out_dir}/parts."
    if e.kind == "input":
        _fail(f"{e}. Rerunning will fail the same way: change the analysis's parameters (interp analyses "
              f"--params) or inputs. {kept}", 2)
    traceback.print_exception(e.__cause__ or e, file=sys.stderr)
    if e.kind == "bug":
        _fail(f"{e}. Rerunning the same command will fail the same way (a bug: please report it with the "
              f"traceback above). {kept}", 1)
    _fail(f"{e}. {kept[:-1]}; rerun the same command to resume.", 1)


@app.command()
def report(
    model: str = typer.Option(None, "--model", "-m", help="Model name (see `interp models`), folder or "
                              ".gguf. Default: default"),
    analyses: str = typer.Option(None, "--analyses", "-a", help="Comma-separated analysis names "
                                 "(see `interp analyses`). Default: all available except the opt-in ones "
                                 f"({_opt_in()})"),
    out: str = typer.Option(None, "--out", "-o", help="Output folder. Default: reports/runs/<model>"),
    config: str = typer.Option(None, "--config", "-c",
                              help="TOML file with the same keys; flags override it"),
    n_tokens: int = typer.Option(None, "--n-tokens", help="Tokens per text for analyses that take n_tokens"),
    seed: int = typer.Option(None, "--seed", help="Random seed (default 0)"),
    top_k: int = typer.Option(None, "--top-k", help="Heads per score in tables and the atlas (default 10)"),
    resume: bool = typer.Option(None, "--resume/--no-resume", help="Reuse finished analyses in --out "
                                "(default: resume)"),
    force: bool = typer.Option(False, "--force",
                               help="Replace a run of another model or interp version in --out"),
    param: list[str] = typer.Option(None, "--param", "-p", help="Set one analysis parameter: "
                                    "ANALYSIS.KEY=VALUE (repeatable; VALUE as in TOML, e.g. sinks.n_samples=20, "
                                    "sinks.streaming.enabled=false; see `interp analyses --params`)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars"),
    static: bool = typer.Option(False, "--static", help="report.html as the print-friendly page of one section "
                                "per score (default: the interactive head atlas)"),
    ray: str = typer.Option(None, "--ray", help="Run the work units on Ray: 'local' (a loopback cluster on this "
                            "machine, stopped afterwards), 'auto', HOST:PORT or ray://HOST:PORT (join a cluster)"),
    workers: int = typer.Option(None, "--workers", help="Model replicas (Ray actors) with --ray (default 2)"),
    cpus_per_worker: float = typer.Option(None, "--cpus-per-worker", help="CPUs per replica; torch threads "
                                          "are pinned to it (default 1)"),
    gpus_per_worker: float = typer.Option(None, "--gpus-per-worker", help="GPUs per replica (default 0)"),
    plan_only: bool = typer.Option(False, "--plan", help="Print the memory plan of this run (per device) and "
                                   "exit; exit code 2 when it does not fit"),
):
    """Run analyses on a model; write scores.parquet/csv, per_token.parquet, roles.parquet, report.html,
    manifest.json."""
    from interp.report.config import apply_overrides
    from interp.report.runner import AnalysisFailed, ReportError, load_config, run_report

    if plan_only:
        cfg = load_config(config) if config else {}
        names = [a.strip() for a in analyses.split(",") if a.strip()] if analyses else cfg.get("analyses")
        _show_plan(model or cfg.get("model") or "default", n_tokens or cfg.get("n_tokens") or 512, 1, names,
                   None, None, "float32")
        return
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"  # the analyses' own progress bars too
    out_dir = out
    try:
        cfg = load_config(config) if config else {}
        names = [a.strip() for a in analyses.split(",") if a.strip()] if analyses else cfg.get("analyses")
        model_spec = model or cfg.get("model") or "default"
        out_dir = out or cfg.get("out") or f"reports/runs/{model_spec.replace('/', '_')}"
        res = run_report(
            model_spec, names, out_dir, params=apply_overrides(cfg.get("params"), param),
            n_tokens=n_tokens if n_tokens is not None else cfg.get("n_tokens"),
            seed=seed if seed is not None else cfg.get("seed", 0),
            resume=resume if resume is not None else cfg.get("resume", True), force=force,
            top_k=top_k if top_k is not None else cfg.get("top_k", 10),
            command=_command(model_spec, names, out_dir, config, n_tokens, seed, top_k, resume, force, param),
            progress=not quiet, static=static, **_ray_options(ray, workers, cpus_per_worker, gpus_per_worker))
    except ReportError as e:
        _fail(str(e))
    except AnalysisFailed as e:
        _analysis_failed(e, out_dir)
    t = res.manifest["timings_s"]
    typer.echo(f"wrote {res.out}/report.html, scores.parquet ({len(res.scores)} rows), manifest.json "
               f"in {t['total']:.1f} s (computed: {', '.join(res.computed) or 'none'}; "
               f"resumed: {', '.join(res.resumed) or 'none'})")


def _ray_options(ray, workers, cpus, gpus) -> dict:
    if ray is None:
        if workers is not None or cpus is not None or gpus is not None:
            _fail("--workers, --cpus-per-worker and --gpus-per-worker need --ray (local, auto or an address)")
        return {}
    res = {k: v for k, v in (("num_cpus", cpus), ("num_gpus", gpus)) if v is not None}
    return {"ray": ray, "workers": 2 if workers is None else workers, "worker_resources": res}


def _command(model, names, out, config, n_tokens, seed, top_k, resume, force, params=()) -> list[str]:
    """The effective command line (works the same under ``interp`` and ``CliRunner``)."""
    cmd = ["interp", "report", "--model", model, "--out", str(out)]
    for flag, v in [("--analyses", ",".join(names) if names else None), ("--config", config),
                    ("--n-tokens", n_tokens), ("--seed", seed), ("--top-k", top_k)]:
        if v is not None:
            cmd += [flag, str(v)]
    for item in params or ():
        cmd += ["--param", item]
    cmd += [] if resume is None else ["--resume" if resume else "--no-resume"]
    return cmd + (["--force"] if force else [])


@app.command("analyses")
def list_analyses(
    params: bool = typer.Option(False, "--params", "-p", help="Also list each analysis's parameters (type, "
                                "default, allowed values), as set by [params.NAME] or --param NAME.KEY=VALUE"),
):
    """List the registered analyses with one-line descriptions."""
    from interp.analyses import registry

    for name, spec in registry.REGISTRY.items():
        note = ("" if spec.available() else "  [not installed]") + ("" if spec.in_default else "  [opt-in]")
        typer.echo(f"{name:<20} {spec.description}{note}")
        if params and spec.available():
            for line in spec.load().params.describe(f"{name}."):
                typer.echo(f"    {line}")


@app.command("models")
def list_models():
    """List known model names (packaged models, their aliases, tiny test models)."""
    from interp.registry import ALIASES, PACKAGED

    for name, m in PACKAGED.items():
        aliases = sorted(a for a, t in ALIASES.items() if t == name)
        typer.echo(f"{name:<24} {m.hf_name}  aliases: {', '.join(aliases) or '-'}  install: {m.install}")
    from interp.tiny import FAMILIES

    for fam in FAMILIES:
        typer.echo(f"{'tiny-' + fam:<24} random tiny {fam} model for tests (no weights on disk)")


@app.command("compare")
def compare(
    report_a: str = typer.Argument(..., help="First report folder (the --out of `interp report`)"),
    report_b: str = typer.Argument(..., help="Second report folder"),
    out: str = typer.Option(..., "--out", "-o", help="Folder for compare.html, compare.parquet/csv, roles_diff"),
    force: bool = typer.Option(False, "--force", help="Compare runs of different interp versions or parameters; "
                               "replace a comparison already in --out"),
):
    """Compare two reports score by score: Spearman over heads (same shape) or layer profiles by depth."""
    from interp.report.compare import CompareError, compare_reports, summary

    try:
        table = compare_reports(report_a, report_b, out, force=force)
    except CompareError as e:
        _fail(str(e))
    typer.echo(summary(table))
    typer.echo(f"wrote {out}/compare.html, compare.parquet, roles_diff.parquet")
@app.command("plan")
def plan_cmd(
    model: str = typer.Option("default", "--model", "-m", help="Model name, folder or .gguf (weights not read)"),
    tokens: int = typer.Option(..., "--tokens", "-n", help="Tokens per sequence"),
    batch: int = typer.Option(1, "--batch", "-b", help="Sequences per forward"),
    analyses: str = typer.Option(None, "--analyses", "-a", help="Comma-separated analyses (adds the statistics "
                                 "they keep)"),
    device_map: str = typer.Option(None, "--device-map", help="'auto': spread the layers over the devices"),
    max_memory: str = typer.Option(None, "--max-memory", help="Budget per device, e.g. cpu=20GiB,0=70GiB "
                                   "(default: what is free now)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
):
    """Print the expected peak memory per device of one forward; exit 2 (one line) when it does not fit."""
    names = [a.strip() for a in analyses.split(",") if a.strip()] if analyses else None
    _show_plan(model, tokens, batch, names, device_map, max_memory, dtype)


def _parse_max_memory(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        key, sep, size = item.partition("=")
        if not sep:
            _fail(f"--max-memory item {item!r} is not DEVICE=SIZE (e.g. cpu=20GiB,0=70GiB)")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = size.strip()
    return out


def _show_plan(model, tokens, batch, names, device_map, max_memory, dtype) -> None:
    from interp.plan import plan, plan_for

    if device_map not in (None, "auto"):
        _fail(f"--device-map {device_map!r}: the command line takes 'auto' (pass a dict through the Python API)")
    try:
        mm = _parse_max_memory(max_memory)
        m = plan_for(model, dtype=dtype)
        dm = None
        if device_map == "auto":
            from interp.devices import resolve_device_map

            dm = resolve_device_map(m.hf, "auto", max_memory=mm, offload_folder="offload", dtype=m.dtype)
        p = plan(m, tokens, batch, analyses=names, device_map=dm, max_memory=mm)
    except (ValueError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(p.table())
    if not p.fits:
        _fail(p.message())


def main():
    app()


if __name__ == "__main__":
    main()
