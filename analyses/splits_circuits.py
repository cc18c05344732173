"""Work units (``interp.units.Splitter``) of the ``circuits`` analysis (``analyses/circuit_heads.py``).

1. the base metrics (M on the clean and corrupt prompts) one unit; then per edge method (EAP, EAP-IG) one unit
   per prompt batch ``start … start + batch_size``, whose result is the batch's SUM of edge scores
   ``[n_nodes, n_inputs]`` (float64). ``merge`` adds the sums in batch order from zero and divides by the
   number of prompts, which is what ``circuit_heads.run`` does with the same batches, so the tables are equal
   exactly whatever the worker count or finish order;
2. with patching on, one unit per chunk of ``heads_per_unit`` heads in ``L{layer}H{head}`` order (the chunks
   need the model's shape, which ``split`` does not have, so they are the next round, made by ``follow`` from
   the replicas' ``ModelInfo``); each patches its heads' z over all prompts and ``merge`` concatenates the
   chunks in head order.

Tested in ``tests/unit/test_circuit_heads.py`` (several batch and chunk sizes, shuffled completion order) and
``tests/integration/test_distributed.py`` (two Ray workers).
"""

from __future__ import annotations

from interp.units import Splitter, Unit


def _params(params):
    from .circuit_heads import CircuitsParams

    return CircuitsParams.coerce(params, where="circuits")


def _key(payload: dict) -> str:
    part = payload["part"]
    if part == "base":
        return "base"
    if part == "patching":
        (l0, h0), (l1, h1) = payload["heads"][0], payload["heads"][-1]
        return f"patching|L{l0}H{h0}-L{l1}H{h1}"
    return f"{part}|{payload['start']}"


def _units(payloads: list[dict], start: int) -> list[Unit]:
    return [Unit("circuits", _key(u), start + i, u) for i, u in enumerate(payloads)]


def _split(params):
    from .circuit_heads import first_payloads

    return _units(first_payloads(_params(params)), 0)


def _follow(info, params, units, results):
    from .circuit_heads import patch_payloads

    if any(u.payload["part"] == "patching" for u in units):
        return []
    return _units(patch_payloads(info.shape, _params(params)), len(units))


def _run(model, params, unit):
    from .circuit_heads import run_unit

    return run_unit(model, _params(params), unit.payload)


def _merge(info, params, results):
    from .circuit_heads import circuit_tables

    return circuit_tables(info.name, info.shape, _params(params), list(results))


CIRCUITS = Splitter(_split, _run, _merge, "base metrics, one unit per EAP / EAP-IG prompt batch; then one per "
                    "patching chunk of heads", follow=_follow)
