"""A planted analysis for the distributed tests: ``planted`` scores first-token mass on ``n_units`` generated
texts (one unit each, through ``attention_basics``' own per-text function) and can plant faults: a unit that
kills its own worker process (SIGKILL) on its first attempt (a marker file records the attempt), a unit that
always kills its worker, and a delay per unit (so a test can kill the driver mid-run)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from interp.params import Params, param
from interp.units import Splitter, Unit

TEXT = "The {i}-th note says that the quick brown fox jumps over {j} lazy dogs near the river bank."


@dataclass(frozen=True)
class PlantedParams(Params):
    n_units: int = param(6, "units", ge=1)
    delay: float = param(0.0, "seconds each unit sleeps", ge=0)
    fault_dir: str | None = param(None, "folder of the once-only kill markers")
    kill_once: tuple[int, ...] = param((), "units that kill their worker on the first attempt")
    kill_always: tuple[int, ...] = param((), "units that kill their worker on every attempt")


def _stats(model, i: int):
    from interp.analyses.basic import text_stats

    return text_stats(model, i, TEXT.format(i=i, j=i * 7 + 3), 48)


def _fault(p: PlantedParams, i: int) -> None:
    if i in p.kill_always:
        os.kill(os.getpid(), signal.SIGKILL)
    if i in p.kill_once:
        marker = Path(p.fault_dir) / f"killed-{i}"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def run(model, params=None, out_dir=None) -> dict:
    """The one-process result (no faults, no delay)."""
    from interp.analyses.basic import tables_from_stats

    p = PlantedParams.coerce(params, where="planted")
    return _rename(tables_from_stats(model.name, model.shape, [_stats(model, i) for i in range(p.n_units)]))


def _rename(tables: dict) -> dict:
    out = {k: v.assign(analysis="planted") for k, v in tables.items()}
    return out


def _split(params):
    p = PlantedParams.coerce(params, where="planted")
    return [Unit("planted", f"u{i}", i, {"i": i}) for i in range(p.n_units)]


def _run_unit(model, params, unit):
    import torch

    p = PlantedParams.coerce(params, where="planted")
    i = unit.payload["i"]
    _fault(p, i)
    time.sleep(p.delay)
    mass, ent, n, pt = _stats(model, i)
    return {"mass": mass, "ent": ent, "n": n, "pt": pt, "pid": os.getpid(), "t": torch.get_num_threads()}


def _merge(info, params, results):
    import torch

    from interp.analyses.basic import tables_from_stats

    stats = [(torch.from_numpy(r["mass"]), torch.from_numpy(r["ent"]), r["n"], r["pt"]) for r in results]
    return _rename(tables_from_stats(info.name, info.shape, stats))


SPLITTER = Splitter(_split, _run_unit, _merge, "one generated text per unit, with planted faults")


def register() -> None:
    """Register ``planted`` (analysis and splitter) in this process; actors get the code by value."""
    import sys

    import ray.cloudpickle

    from interp.analyses.registry import AnalysisSpec
    from interp.analyses.registry import register as register_analysis
    from interp.units import register_splitter

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    register_analysis(AnalysisSpec("planted", "planted faults (tests)", run=run, params=PlantedParams,
                                   in_default=False), replace_existing=True)
    register_splitter("planted", SPLITTER)
