"""A memory plan before the run: what one forward at ``n_tokens`` × ``batch`` needs on every device, checked
against what fits, so a run that cannot fit is refused up front (one line: what needs how much, what fits, what
to change) instead of failing mid-way with an allocator error.

Per device (``e`` = bytes per element of the model's dtype, ``B`` batch, ``N`` tokens, ``L_d`` the decoder
layers placed on device ``d``)::

    runtime      CPU: the interpreter with torch + transformers imported (RUNTIME_CPU); GPU: the CUDA context
    weights      Σ numel·e of the parameters and buffers placed there ("disk" offload: none in memory)
    kept         statistics gathered on the CPU: L · B · H · N · 4 bytes per row/column statistic (top-k: ·2k),
                 and for generation the KV cache 2 · L_d · B · KV · N · d_head · e on each layer's device
    activations  the largest layer transient: B·N·(4·d_model + (H + 3·KV)·d_head + 3·d_mlp)·e
                 (two residual copies, the normed input and the output; q, k, v, post-RoPE q/k and the
                 attention output; the MLP's gate, up and their product) + the statistics tile
                 (≤ the engine's ``memory_budget_mb``, and never more than B·H·N·N·4)
    logits       B · N · d_vocab · e on the unembedding's device (the largest transient of a long prompt),
                 plus a float32 copy when the caller's metric upcasts them (``metric_upcast=True``)

    peak(d) = runtime + weights + kept + activations + logits

The transients are summed, not maxed: the layer activations are freed before the unembedding runs, but the
allocators keep what was freed (glibc keeps the activation-sized chunks on its heap once its mmap threshold has
grown; torch's CUDA caching allocator keeps them reserved), so the process's peak holds both (measured: with
max() the default model at 8192 tokens was under-estimated by 11 %, with the sum within 3 %).

What fits: ``max_memory`` given to ``plan`` or ``model.memory_budget`` (``{"cpu": "20GiB", 0: "70GiB"}``; like
accelerate's ``max_memory``, a budget for the model's tensors: the runtime line is added to it), else what is
free now (CPU: ``MemAvailable`` + this process's own RSS, which already holds the runtime and loaded weights;
GPU: ``torch.cuda.mem_get_info`` free + what torch already reserved). ``benchmarks/memory_plan.py`` checks the
estimate against measured peak RSS of the default model at 512 / 2048 / 8192 tokens
(``reports/bench/memory_plan.json``). ``INTERP_PLAN=off`` disables the check (the plan still prints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

GiB = 2**30
RUNTIME_CPU = 450 * 2**20  # RSS of a process that has loaded a (tiny) model: imports + libraries (benchmark)
CUDA_CONTEXT = 600 * 2**20  # the CUDA context and cuBLAS workspace on each GPU
# statistics the registered analyses keep per head and position (interp.attention_stats calls in analyses/)
ANALYSIS_STATS = {
    "sinks": ("col_alpha",), "hidden_sinks": ("col_alpha",), "secondary_sinks": ("col_alpha",),
    "streaming": ("mass_first", "mass_recent"), "duo_attention": ("mass_first", "mass_recent"),
    "extreme_tokens": ("entropy", "col_entropy"), "waad_fai": ("attn_distance", "col_sum", "mass_self"),
    "attention_basics": ("entropy", "argmax", "mass_first", "mass_self", "mass_prev", "induction"),
    "head_detector": ("entropy", "argmax", "mass_first", "mass_self", "mass_prev", "induction"),
    "retrieval": ("argmax",),
}


class PlanError(ValueError):
    """A run that does not fit its devices (one line: what needs how much, what fits, what to change)."""


@dataclass
class MemoryPlan:
    """``rows[device]`` = ``{item: bytes}`` (items: runtime, weights, kept, activations, logits); ``budget``
    ``{device: bytes}``; ``n_tokens``, ``batch``; ``max_tokens`` fitting (filled by ``plan``)."""

    model: str
    n_tokens: int
    batch: int
    rows: dict[str, dict[str, int]]
    budget: dict[str, int]
    stats: tuple = ()
    max_tokens: int | None = None
    notes: list = field(default_factory=list)

    def peak(self, device: str) -> int:
        r = self.rows[device]
        return r["runtime"] + r["weights"] + r["kept"] + r["activations"] + r["logits"]

    def over(self) -> list[str]:
        """Devices whose expected peak exceeds their budget."""
        return [d for d in self.rows if d in self.budget and self.peak(d) > self.budget[d]]

    @property
    def fits(self) -> bool:
        return not self.over()

    def table(self) -> str:
        cols = ("runtime", "weights", "kept", "activations", "logits")
        head = f"{'device':<8}" + "".join(f"{c:>13}" for c in cols) + f"{'peak':>11}{'fits in':>11}"
        lines = [f"memory plan: {self.model}, {self.n_tokens} tokens × batch {self.batch}"
                 + (f", statistics {', '.join(self.stats)}" if self.stats else ""), head]
        for d, r in self.rows.items():
            budget = self.budget.get(d)
            lines.append(f"{d:<8}" + "".join(f"{_gib(r[c]):>13}" for c in cols) + f"{_gib(self.peak(d)):>11}"
                         + f"{_gib(budget) if budget is not None else '-':>11}"
                         + ("" if budget is None or self.peak(d) <= budget else "  OVER"))
        if self.max_tokens is not None:
            lines.append(f"at most {self.max_tokens} tokens fit at batch {self.batch}")
        return "\n".join(lines + self.notes)

    def message(self) -> str:
        """The one-line refusal (empty when it fits)."""
        bad = self.over()
        if not bad:
            return ""
        d = bad[0]
        r = self.rows[d]
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in r.items() if v)
        if self.max_tokens == 0:  # not even one token: the runtime and the weights alone do not fit
            fix = [f"a larger memory budget (the weights alone need {_gib(r['weights'])})"]
        else:
            fix = [f"fewer tokens (≤ {self.max_tokens} fit)" if self.max_tokens else "fewer tokens",
                   "a smaller batch", "a larger memory budget"]
        fix += ["device_map='auto' (--device-map auto) or more devices"] if len(self.rows) == 1 or d != "cpu" \
            else ["more devices"]
        return (f"{self.model} at {self.n_tokens} tokens × batch {self.batch} needs {_gib(self.peak(d))} on {d} "
                f"({parts}) but {_gib(self.budget[d])} fit; use {', '.join(fix)}")

    def check(self) -> MemoryPlan:
        """Raise ``PlanError`` with ``message()`` unless it fits (``INTERP_PLAN=off`` skips); returns self."""
        if not self.fits and os.environ.get("INTERP_PLAN", "").lower() not in ("off", "0"):
            raise PlanError(self.message())
        return self


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 100 else f"{n / 2**20:.1f} MiB"


# --- where the weights live ----------------------------------------------------------------------------------
def _dev_name(v) -> str:
    if isinstance(v, int):
        return f"cuda:{v}"
    return "cpu" if v in ("cpu", "meta") else str(v)


def placement(hf, device_map: dict | None = None) -> dict[str, str]:
    """``{parameter or buffer name: device name}`` ("cpu", "cuda:N", "disk") from ``device_map`` (else the
    model's own ``hf_device_map``, else where each tensor is)."""
    dm = device_map if device_map is not None else getattr(hf, "hf_device_map", None)
    names = [n for n, _ in hf.named_parameters()] + [n for n, _ in hf.named_buffers()]
    if not dm:
        where = {n: str(t.device) for n, t in [*hf.named_parameters(), *hf.named_buffers()]}
        return {n: ("cpu" if d == "meta" else d) for n, d in where.items()}
    keys = sorted(dm, key=len, reverse=True)
    out = {}
    for n in names:
        k = next((k for k in keys if not k or n == k or n.startswith(k + ".")), None)
        out[n] = _dev_name(dm[k]) if k is not None else "cpu"
    return out


def weight_bytes(hf, device_map: dict | None = None) -> dict[str, int]:
    """Bytes of parameters and buffers per device name (``"disk"`` for disk-offloaded ones)."""
    where = placement(hf, device_map)
    tensors = dict(hf.named_parameters())
    tensors.update(dict(hf.named_buffers()))
    out: dict[str, int] = {}
    for n, dev in where.items():
        t = tensors[n]
        out[dev] = out.get(dev, 0) + t.numel() * t.element_size()
    return out


def _layer_devices(model, where: dict[str, str]) -> list[str]:
    base = model.arch.base_path
    out = []
    for layer in range(model.shape.n_layers):
        pre = f"{base}.layers.{layer}."
        out.append(next((d for n, d in where.items() if n.startswith(pre)), "cpu"))
    return out


# --- budgets -------------------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def available(device: str) -> int:
    """Bytes a run may use on ``device`` now (see the module doc)."""
    if device == "cpu":
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            return info["MemAvailable"] + _rss()
        except (OSError, KeyError):  # not Linux: psutil's view
            import psutil

            return psutil.virtual_memory().available + psutil.Process().memory_info().rss
    dev = torch.device(device)
    free, _ = torch.cuda.mem_get_info(dev)
    return free + torch.cuda.memory_reserved(dev)


def runtime_bytes(device: str) -> int:
    return RUNTIME_CPU if device == "cpu" else CUDA_CONTEXT


def budgets(devices, max_memory=None) -> dict[str, int]:
    """Bytes that fit per device: ``max_memory[d]`` (as accelerate reads it, the model's tensors on ``d``) plus
    the process runtime, which accelerate does not count; else what is free now (``available``)."""
    from .devices import parse_max_memory

    mm = {_dev_name(k): v for k, v in (parse_max_memory(max_memory) or {}).items()}
    return {d: mm[d] + runtime_bytes(d) if d in mm else available(d) for d in devices if d != "disk"}


# --- the estimate ----------------------------------------------------------------------------------------------
def _stat_factor(stats) -> int:
    """Row/column statistic tensors kept per (layer, batch, head, position); top-k keeps idx + prob per k."""
    n = 0
    for s in stats:
        n += 2 * 8 if s in ("topk", "topk_idx", "topk_prob") else 1
    return n


def estimate(model, n_tokens: int, batch: int = 1, *, stats=(), device_map=None, kv_cache: bool = False,
             memory_budget_mb: int = 256, metric_upcast: bool = False) -> dict[str, dict[str, int]]:
    """``{device: {item: bytes}}`` for one forward of ``batch`` × ``n_tokens`` (see the module doc)."""
    s, hf = model.shape, model.hf
    where = placement(hf, device_map)
    weights = weight_bytes(hf, device_map)
    e = next(hf.parameters()).element_size()
    layer_dev = _layer_devices(model, where)
    lm_dev = next((d for n, d in where.items() if n.startswith("lm_head.")), layer_dev[-1])
    if lm_dev == "disk":
        lm_dev = "cpu"
    c = _text_config(hf.config)
    d_mlp = getattr(c, "intermediate_size", 4 * s.d_model)
    devs = [d for d in dict.fromkeys(["cpu", *[d for d in where.values() if d != "disk"], *layer_dev])
            if d != "disk"]
    rows = {d: dict(runtime=runtime_bytes(d), weights=weights.get(d, 0), kept=0,
                    activations=0, logits=0) for d in devs}
    bn = batch * n_tokens
    act = bn * (4 * s.d_model + (s.n_heads + 3 * s.n_kv_heads) * s.d_head + 3 * d_mlp) * e
    tile = min(memory_budget_mb * 2**20, batch * s.n_heads * n_tokens * n_tokens * 4) if stats else 0
    for d in set(layer_dev):
        d = "cpu" if d == "disk" else d
        rows[d]["activations"] = act + tile
        if kv_cache:
            n_here = sum(1 for x in layer_dev if (x if x != "disk" else "cpu") == d)
            rows[d]["kept"] += 2 * n_here * bn * s.n_kv_heads * s.d_head * e
    rows["cpu"]["kept"] += s.n_layers * batch * s.n_heads * n_tokens * 4 * _stat_factor(stats)
    rows[lm_dev]["logits"] = bn * s.d_vocab * e + (bn * s.d_vocab * 4 if metric_upcast else 0)
    return rows


def _text_config(config):
    return getattr(config, "text_config", None) or config


def plan(model, n_tokens: int, batch: int = 1, *, analyses=None, stats=(), device_map=None, max_memory=None,
         kv_cache: bool = False, memory_budget_mb: int = 256) -> MemoryPlan:
    """The ``MemoryPlan`` of ``model`` (an ``interp.Model``, loaded or built on ``meta`` by ``plan_for``) for
    ``batch`` × ``n_tokens``; ``analyses`` (registered names) adds the statistics they keep
    (``ANALYSIS_STATS``); ``max_memory`` (default: ``model.memory_budget``) sets what fits."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    stats = tuple(dict.fromkeys([*stats, *[x for a in analyses or () for x in ANALYSIS_STATS.get(a, ())]]))
    kw = dict(stats=stats, device_map=device_map, kv_cache=kv_cache, memory_budget_mb=memory_budget_mb)
    rows = estimate(model, n_tokens, batch, **kw)
    mm = max_memory if max_memory is not None else getattr(model, "memory_budget", None)
    p = MemoryPlan(model.name, n_tokens, batch, rows, budgets(rows, mm), stats)
    if not p.fits:
        p.max_tokens = _max_tokens(model, batch, p.budget, kw, n_tokens)
    return p


def _max_tokens(model, batch, budget, kw, hi) -> int:
    """The largest token count whose plan fits ``budget`` (bisection; 0 when not even one token fits)."""
    def fits(n):
        return MemoryPlan(model.name, n, batch, estimate(model, n, batch, **kw), budget).fits

    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def check_run(model, n_tokens: int, batch: int = 1, **kw) -> None:
    """Refuse (``PlanError``, one line) a run of ``model`` that its plan says will not fit. Cheap: a few
    multiplications and one read of ``/proc/meminfo``."""
    if os.environ.get("INTERP_PLAN", "").lower() in ("off", "0"):
        return
    plan(model, n_tokens, batch, **kw).check()


def plan_for(spec: str, *, dtype="float32"):
    """An ``interp.Model`` of ``spec`` with ``meta`` weights (nothing read but the config): enough to plan."""
    from accelerate import init_empty_weights

    from .devices import parse_dtype
    from .model import Model

    dtype = parse_dtype(dtype)
    config = _config_of(spec)
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        hf = AutoModelForCausalLM.from_config(config, dtype=dtype)
    name = spec if spec.startswith("tiny-") else spec.rstrip("/").split("/")[-1].removesuffix(".gguf")
    return Model(hf, None, name=name)


def _config_of(spec: str):
    from pathlib import Path

    from transformers import AutoConfig

    from .registry import ModelNotAvailableError, locate_gguf, resolve_packaged

    if spec.startswith("tiny-"):
        from .tiny import tiny_config

        return tiny_config(spec[len("tiny-"):])
    packaged = resolve_packaged(spec)
    path = locate_gguf(packaged) if packaged is not None else Path(os.path.expanduser(spec))
    if path.suffix == ".gguf":
        return _gguf_config(path, packaged.sha256 if packaged is not None else None)
    try:
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else spec,
                                          local_files_only=os.environ.get("INTERP_ALLOW_DOWNLOAD") != "1")
    except (OSError, ValueError) as e:
        raise ModelNotAvailableError(f"cannot read the config of {spec!r} ({str(e).splitlines()[0][:160]}); "
                                     "pass a packaged name, a folder with config.json or a .gguf file") from None


def _gguf_config(path, sha256: str | None):
    """The config of a GGUF file; packaged models' configs are cached as JSON under ``$INTERP_CACHE`` (parsing
    the GGUF metadata takes ~10-30 s, most of it the tokenizer arrays the plan does not need)."""
    from transformers import AutoConfig, PretrainedConfig

    from . import io
    from .registry import cache_dir

    cache = None
    if sha256 is not None:
        cache = cache_dir() / "configs" / f"{sha256[:16]}.json"
        if cache.exists():
            d = io.read_json(cache)
            return AutoConfig.for_model(d.pop("model_type"), **d)
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if cache is not None and isinstance(config, PretrainedConfig):
        try:
            io.write_json(cache, config.to_dict())
        except OSError:  # a read-only cache: plan without it
            pass
    return config
