"""Circuit head scores (the registered ``circuits`` analysis): EAP and EAP-IG node attribution and activation
patching of every head on a circuit task (IOI, Colored Objects, numeric comparison, or a task file).

With M the task's logit difference (answer − wrong answer at the last position; ``interp.metrics.logit_diff``)
and prompts i = 1 … N (clean / corrupt pairs of ``analyses.circuits.tasks``):

- EAP (Syed et al. 2023; ``circuits.eap_scores``) and EAP-IG (Hanna et al. 2024, m = ``ig_steps``;
  ``circuits.eap_ig_scores``) give edge scores s(u → v) over the graph of ``interp.graph``, averaged over the
  prompts. A head's node scores are its out-edges summed::

      eap_node[l, h] = Σ_v s(L{l}H{h} → v)          eap_abs[l, h] = Σ_v |s(L{l}H{h} → v)|

  ``eap_node`` is attribution patching of the head's own output (the gradients of every stream the head writes
  to add up to ∂M/∂out_h): the first-order estimate of M(clean | out_h ← corrupt) − M(clean). EAP-IG rows are
  ``eap_ig_node`` / ``eap_ig_abs``. The ``edges`` table keeps the ``top_edges`` edges of largest |score|.
- Activation patching (Wang et al. 2022; ``interp.patching.patch_sweep``, site ``z`` at all positions): run the
  corrupt prompts, patch one head's z from the clean run, average M over the prompts::

      patch_z[l, h] = M(corrupt | z_h ← z_h(clean)) − M(corrupt)      patch_z_norm = patch_z / (M(clean) − M(corrupt))

  (the denoising direction: a head the clean behaviour needs scores > 0; ``patch_z_norm`` is NaN when
  M(clean) = M(corrupt)). Model-level rows ``clean_logit_diff`` and ``corrupt_logit_diff`` give M on each run.

The computation is laid out as work units (``interp.analyses.splits_circuits``): the base metrics; one EAP (and
one EAP-IG) unit per batch of ``batch_size`` prompts, whose result is the batch's SUM of edge scores (the metric
summed over the batch, so the score is the sum of the per-prompt scores); one patching unit per chunk of
``heads_per_unit`` heads. ``run`` computes the very same units in one process, and the tables add the batch sums
in batch order from zero (float64) and divide by N, so a distributed run's tables equal ``run``'s exactly for
any worker count or finish order. Changing ``batch_size`` or ``heads_per_unit`` regroups float32 arithmetic
(batched forwards), which moves scores at rounding level only.

Validated in ``tests/unit/test_circuit_heads.py``: EAP edge scores equal the existing ``eap_scores`` on the
whole prompt set, ``eap_node`` equals a separate autograd derivative of M w.r.t. a per-head patch fraction of z
through a plain hook, ``patch_z`` equals a plain-hook patch of one head's z, and merge(split) == ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch

from interp.metrics import logit_diff
from interp.params import ParamError, Params, param

TASKS = ("ioi", "colored_objects", "numeric_comparison")
METHODS = ("eap", "eap_ig", "patching")
EDGE_METHODS = ("eap", "eap_ig")


@dataclass(frozen=True)
class CircuitsParams(Params):
    """Parameters of ``circuits`` (EAP / EAP-IG node scores and activation patching per head)."""

    task: str = param("ioi", "circuit task whose prompts are generated (analyses/circuits)", choices=TASKS)
    task_file: str | None = param(None, "a .jsonl / .csv task file (clean, corrupt, answer, wrong); replaces task")
    n_prompts: int = param(16, "clean/corrupt prompt pairs (with task_file: its first n_prompts rows)", ge=1)
    batch_size: int = param(8, "prompts per EAP / EAP-IG batch (one work unit each)", ge=1)
    methods: tuple[str, ...] = param(METHODS, "head scores computed", choices=METHODS)
    ig_steps: int = param(5, "EAP-IG integration steps m (m = 1 is EAP)", ge=1)
    heads_per_unit: int = param(8, "heads patched per work unit (a chunk in L{layer}H{head} order)", ge=1)
    memory_budget_mb: float = param(1024.0, "memory for the packed patching forwards", gt=0)
    top_edges: int = param(100, "EAP / EAP-IG edges kept in the edges table (largest |score|)", ge=0)
    seed: int = param(0, "seed of the task's prompt generator", ge=0)

    def check(self, where: str) -> None:
        if not self.methods:
            raise ParamError(f"{where}.methods = []: choose at least one of {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ParamError(f"{where}.methods = {list(self.methods)!r}: a method is listed twice")

    def check_model(self, model, where: str = "") -> None:
        if getattr(model, "tokenizer", None) is None:  # a replica's ModelInfo: the replicas check it
            return
        try:
            task_tokens(model, self)
        except (ValueError, FileNotFoundError) as e:
            key = "task_file" if self.task_file else "task"
            raise ParamError(f"{where or 'circuits'}.{key} = {getattr(self, key)!r}: {e}") from None


def task_tokens(model, p: CircuitsParams):
    """The task's ``TaskTokens`` (clean/corrupt ``[n_prompts, pos]``, answer/wrong ``[n_prompts]``)."""
    from .circuits.tasks import ioi_task
    from .circuits.tasks_extra import colored_objects_task, load_tasks, numeric_comparison_task

    if p.task_file:
        tt = load_tasks(p.task_file).tokens(model)
        if tt.clean.shape[0] < p.n_prompts:
            raise ValueError(f"the file has {tt.clean.shape[0]} prompts, fewer than n_prompts = {p.n_prompts}")
        n = p.n_prompts
        return type(tt)(tt.clean[:n], tt.corrupt[:n], tt.answer[:n], tt.wrong[:n])
    make = {"ioi": ioi_task, "colored_objects": colored_objects_task, "numeric_comparison": numeric_comparison_task}
    return make[p.task](model, p.n_prompts, seed=p.seed).tokens(model)


def data_files(params) -> list[dict]:
    p = CircuitsParams.coerce(params, where="circuits")
    return [{"path": str(p.task_file)}] if p.task_file else []


# --- the work units ------------------------------------------------------------------------------------------

def first_payloads(p: CircuitsParams) -> list[dict]:
    """Payloads of the units that need no model: the base metrics, then per method one per prompt batch."""
    out = [{"part": "base"}]
    for method in (m for m in EDGE_METHODS if m in p.methods):
        out += [{"part": method, "start": b0} for b0 in range(0, p.n_prompts, p.batch_size)]
    return out


def head_chunks(shape, heads_per_unit: int) -> list[list[tuple[int, int]]]:
    """Every ``(layer, head)`` in ``L{layer}H{head}`` order, in chunks of ``heads_per_unit``."""
    heads = [(layer, h) for layer in range(shape.n_layers) for h in range(shape.n_heads)]
    return [heads[i:i + heads_per_unit] for i in range(0, len(heads), heads_per_unit)]


def patch_payloads(shape, p: CircuitsParams) -> list[dict]:
    if "patching" not in p.methods:
        return []
    return [{"part": "patching", "heads": [list(h) for h in c]} for c in head_chunks(shape, p.heads_per_unit)]


def run_unit(model, p: CircuitsParams, payload: dict, tt=None) -> dict:
    """One unit's result (JSON-able through ``interp.units.encode``); ``tt``: the task tokens if already built."""
    tt = task_tokens(model, p) if tt is None else tt
    part = payload["part"]
    if part == "base":
        with torch.no_grad():
            clean = logit_diff(model.logits(tt.clean), tt.answer, tt.wrong).double()
            corrupt = logit_diff(model.logits(tt.corrupt), tt.answer, tt.wrong).double()
        return {"part": part, "clean": clean.numpy(), "corrupt": corrupt.numpy()}
    if part in EDGE_METHODS:
        b0 = int(payload["start"])
        return {"part": part, "start": b0, "sum": batch_edge_sum(model, tt, b0, b0 + p.batch_size, part,
                                                                 p.ig_steps)}
    heads = [(int(a), int(b)) for a, b in payload["heads"]]
    return {"part": part, "heads": [list(h) for h in heads], **patch_heads(model, tt, heads, p.memory_budget_mb)}


def batch_edge_sum(model, tt, start: int, stop: int, method: str, ig_steps: int) -> np.ndarray:
    """Σ over prompts ``start:stop`` of the per-prompt EAP (or EAP-IG) edge scores: ``[n_nodes, n_inputs]``
    float64 (the metric is the batch's summed logit difference, so the score is the sum of per-prompt scores)."""
    from .circuits import eap_ig_scores, eap_scores

    sl = slice(start, stop)
    answer, wrong = tt.answer[sl], tt.wrong[sl]

    def metric(logits):
        return logit_diff(logits, answer, wrong).sum()

    if method == "eap":
        s = eap_scores(model, tt.clean[sl], tt.corrupt[sl], metric)
    else:
        s = eap_ig_scores(model, tt.clean[sl], tt.corrupt[sl], metric, steps=ig_steps)
    return s.double().numpy()


def patch_heads(model, tt, heads: list[tuple[int, int]], memory_budget_mb: float) -> dict:
    """Activation patching of z (all positions) for ``heads`` (in order): ``values`` ``[len(heads)]`` float64
    (the patched runs' mean logit difference) and each sweep's unpatched ``clean`` / ``corrupt`` means."""
    from interp.patching import patch_sweep

    def metric(logits):
        return logit_diff(logits, tt.answer, tt.wrong)

    values, clean, corrupt = [], [], []
    for layer, group in groupby(heads, key=lambda x: x[0]):
        res = patch_sweep(model, tt.clean, tt.corrupt, "z", metric, layers=[layer], heads=[h for _, h in group],
                          memory_budget_mb=memory_budget_mb)
        n = res.values.shape[1]
        values += res.values[0].double().tolist()
        clean += [res.clean_value] * n
        corrupt += [res.corrupt_value] * n
    return {"values": np.array(values), "clean": np.array(clean), "corrupt": np.array(corrupt)}


# --- tables --------------------------------------------------------------------------------------------------

def mean_edge_scores(results: list[dict], method: str, n_prompts: int) -> torch.Tensor:
    """``[n_nodes, n_inputs]`` float64: the batch sums of ``method`` added in batch order from zero, ÷ N."""
    batches = sorted((r for r in results if r["part"] == method), key=lambda r: r["start"])
    total = torch.zeros(batches[0]["sum"].shape, dtype=torch.float64)
    for r in batches:
        total = total + torch.from_numpy(r["sum"])
    return total / n_prompts


def node_scores(graph, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signed, absolute)`` ``[layer, head]`` sums of each head's out-edge scores (``scores [n_nodes,
    n_inputs]``, 0 where no edge exists)."""
    rows = torch.tensor([graph.nodes.index(f"L{layer}H{h}") for layer in range(graph.n_layers)
                         for h in range(graph.n_heads)])
    out = scores[rows]
    shape = (graph.n_layers, graph.n_heads)
    return out.sum(1).reshape(shape), out.abs().sum(1).reshape(shape)


def circuit_tables(model_name: str, shape, p: CircuitsParams, results: list[dict]) -> dict:
    """The ``scores`` and ``edges`` tables from the unit results (in unit order)."""
    import pandas as pd

    from interp.graph import Graph
    from interp.scores import ScoreTable

    from .circuits.circuit import Circuit

    common = dict(model=model_name, analysis="circuits", n_samples=p.n_prompts)
    (base,) = [r for r in results if r["part"] == "base"]
    tables = [ScoreTable.scalar(float(np.mean(base[k])), score=f"{k}_logit_diff", **common)
              for k in ("clean", "corrupt")]
    graph, edges = Graph(shape.n_layers, shape.n_heads, shape.n_kv_heads), []
    for method in (m for m in EDGE_METHODS if m in p.methods):
        mean = mean_edge_scores(results, method, p.n_prompts)
        signed, absolute = node_scores(graph, mean)
        tables += [ScoreTable.from_matrix(signed, score=f"{method}_node", **common),
                   ScoreTable.from_matrix(absolute, score=f"{method}_abs", **common)]
        top = Circuit.from_scores(graph, mean, method=method).top(p.top_edges).to_frame()
        edges.append(top.assign(method=method)[["method", "upstream", "downstream", "input", "score"]])
    if "patching" in p.methods:
        tables += _patch_tables(shape, [r for r in results if r["part"] == "patching"], common)
    out = {"scores": ScoreTable.concat(tables)}
    if edges:
        out["edges"] = pd.concat(edges, ignore_index=True)
    return out


def _patch_tables(shape, chunks: list[dict], common: dict) -> list:
    from interp.scores import ScoreTable

    heads = [tuple(h) for r in chunks for h in r["heads"]]
    want = [h for c in head_chunks(shape, len(heads) or 1) for h in c]
    if heads != want:
        raise ValueError(f"circuits: patching results cover heads {heads[:3]}…, not every head in order")
    value, clean, corrupt = (np.concatenate([r[k] for r in chunks]) for k in ("values", "clean", "corrupt"))
    effect = value - corrupt
    denom = clean - corrupt
    norm = np.divide(effect, denom, out=np.full_like(effect, np.nan), where=denom != 0)
    grid = (shape.n_layers, shape.n_heads)
    return [ScoreTable.from_matrix(effect.reshape(grid), score="patch_z", **common),
            ScoreTable.from_matrix(norm.reshape(grid), score="patch_z_norm", **common)]


def run(model, params: CircuitsParams | dict | None = None, out_dir=None) -> dict:
    """Report entry: every unit of ``interp.analyses.splits_circuits`` in one process, then the tables."""
    p = CircuitsParams.coerce(params, where="circuits")
    tt = task_tokens(model, p)
    payloads = first_payloads(p) + patch_payloads(model.shape, p)
    return circuit_tables(model.name, model.shape, p, [run_unit(model, p, u, tt) for u in payloads])
