"""The report: run analyses on a model and write tidy tables, a self-contained HTML page and a manifest.

    from interp.report import run_report
    res = run_report("tiny-llama", ["attention_basics"], "reports/runs/tiny")
    res.scores  # the tidy score table (interp.scores columns)
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("run_report", "load_config", "ReportError", "AnalysisFailed", "ReportResult"):
        from . import runner

        return getattr(runner, name)
    if name == "render_report":
        from .html import render_report

        return render_report
    raise AttributeError(f"module 'interp.report' has no attribute {name!r}")


__all__ = ["run_report", "load_config", "render_report", "ReportError", "AnalysisFailed", "ReportResult"]
