"""Run options of ``interp report`` (TOML ``--config`` keys, CLI flags, ``run_report`` arguments), checked before
anything is loaded: every bad value is one ``ReportError`` line naming the key, the value and what is allowed.

TOML keys: ``model, analyses, out, seed, n_tokens, resume, top_k`` and ``[params.<analysis>]`` tables (nested
``[params.<analysis>.<part>]`` for sub-analyses; see ``interp analyses --params``). On the command line,
``--param ANALYSIS.KEY=VALUE`` (repeatable) sets one parameter; VALUE is read as a TOML value (``8``, ``0.5``,
``true``, ``[500, 1000]``, ``"text"``) and as a plain string when it is not one. Tested in
``tests/integration/test_cli_params.py``.
"""

from __future__ import annotations

import os
from pathlib import Path


class ReportError(Exception):
    """Bad input to a report run (message is one line meant for the user; the CLI exits with code 2)."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _names_ok(v) -> bool:
    if isinstance(v, str):
        return True
    return isinstance(v, (list, tuple)) and all(isinstance(a, str) and a.strip() for a in v)


def _params_ok(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


OPTIONS = {  # key: (accepts, what is allowed)
    "model": (lambda v: isinstance(v, str) and bool(v.strip()), "a model name, folder or .gguf path (a string)"),
    "analyses": (_names_ok, "a list of analysis names or one comma-separated string"),
    "out": (lambda v: isinstance(v, (str, os.PathLike)) and bool(str(v).strip()), "a folder path (a string)"),
    "seed": (lambda v: _is_int(v) and 0 <= v < 2**63, "an int >= 0"),
    "n_tokens": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "resume": (lambda v: isinstance(v, bool), "true or false"),
    "top_k": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "params": (_params_ok, "a table of [params.<analysis>] tables"),
}


def check_options(opts: dict, where: str = "") -> None:
    """``ReportError`` for the first option of ``opts`` (``None`` = not given) that has a bad type or value."""
    for key, value in opts.items():
        if value is None or key not in OPTIONS:
            continue
        ok, allowed = OPTIONS[key]
        if not ok(value):
            raise ReportError(f"{where}{key} = {value!r}: expected {allowed}")
    for name, table in (opts.get("params") or {}).items():
        if not isinstance(table, dict):
            raise ReportError(f"{where}params.{name} = {table!r}: expected a table of parameters "
                              f"([params.{name}] in TOML)")


def load_config(path) -> dict:
    """Read and check a TOML config (keys: model, analyses, out, seed, n_tokens, resume, top_k,
    [params.<analysis>])."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"config file {path} does not exist")
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ReportError(f"config file {path} is not valid TOML: {str(e).splitlines()[0]}") from None
    bad = sorted(set(cfg) - set(OPTIONS))
    if bad:
        raise ReportError(f"config file {path}: unknown keys {bad}; valid keys: {sorted(OPTIONS)}")
    check_options(cfg, f"config file {path}: ")
    if isinstance(cfg.get("analyses"), str):
        cfg["analyses"] = [a.strip() for a in cfg["analyses"].split(",") if a.strip()]
    return cfg


def _parse_value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(params: dict | None, items) -> dict:
    """``params`` (analysis → table) with each ``"ANALYSIS.KEY[.SUB]=VALUE"`` of ``items`` set (a new dict)."""
    import copy

    out = copy.deepcopy(params or {})
    for item in items or []:
        key, eq, text = item.partition("=")
        path = [p.strip() for p in key.split(".")]
        if not eq or len(path) < 2 or not all(path):
            raise ReportError(f"--param {item!r}: write ANALYSIS.KEY=VALUE, e.g. sinks.n_samples=20 or "
                              "sinks.streaming.n_tokens=512")
        d = out
        for part in path[:-1]:
            cur = d.get(part)
            if isinstance(cur, bool):  # `streaming = false` then a streaming.* key: keep the switch
                cur = {"enabled": cur}
            if cur is None:
                cur = {}
            if not isinstance(cur, dict):
                raise ReportError(f"--param {item!r}: {part} = {cur!r} is a value, not a table of parameters")
            d[part] = cur
            d = cur
        d[path[-1]] = _parse_value(text.strip())
    return out
