"""The one dispatcher: which implementation computes attention statistics, and (inside a model's forward) how the
layer output is computed next to them.  ``compute_attention_stats`` and the interp attention function
(``interp/hooks.py``) ask only ``plan``; nothing else chooses a path.

``plan(Request(...)) -> Plan`` with ``Plan.impl`` the statistics kernel and ``Plan.forward`` the layer output:

    impl asked   device  dtype          other                                impl        forward / note
    ----------   ------  -------------  -----------------------------------  ----------  ----------------------
    (no stats)   any     any                                                 None        sdpa (eager*)
    auto         cpu     fp16/bf16/fp32 stats ⊆ fused set, C kernel loads     fused       fused if output wanted†
    auto         cpu     fp64, or topk, or no C kernel                        chunked     flash_cpu if LSE wanted‡
    auto         cuda    fp16/fp32, bf16 on sm80+, triton imports            triton      (chunked if it fails
                                                                                         to compile, warning)
    auto         cuda    bf16 on sm<80, or triton not importable             chunked     + one-line warning
    auto         cuda    fp64 (the Triton kernels compute in fp32)           chunked
    auto         other                                                       chunked
    explicit     any     any            checked: an impl that cannot run     as asked    (no fallback)
                                        here raises, naming the fix

    *  ``eager`` whenever a hook reads/writes the pattern or the layer has a logit softcap (SDPA has none).
    †  ``fused``: the CPU fused kernel computes the output from the statistics' own tiles (one QKᵀ); needs the
       output wanted (a capture with ``attend``), plain causal attention (no HF mask, no padding, no softcap).
    ‡  ``flash_cpu``: ``aten._scaled_dot_product_flash_attention_for_cpu`` computes the output and the row LSE
       handed to the statistics (chunked / fused / triton; fp32/fp64, no mask or padding, query_pos == key_pos,
       window inactive).  ``flash_cuda`` (``aten._scaled_dot_product_flash_attention``: natural-log LSE
       ``[batch, head, query_pos]``, fp16/bf16, sm80+) follows the same rule once ``Caps.flash_cuda_lse`` is True
       — it is False until that path has run on a GPU; the plan and the forward for it are in place.

``INTERP_ATTN_IMPL`` (auto | reference | chunked | fused | triton) replaces ``impl="auto"`` for the whole process;
an ``impl`` given explicitly wins over it.  ``check_impl`` rejects an unknown value (argument or variable) with
the valid list; captures call it in their constructor, i.e. before any forward.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ._spec import IMPLS

ENV = "INTERP_ATTN_IMPL"
KERNELS = ("reference", "chunked", "fused", "triton")
FORWARDS = ("eager", "fused", "flash_cpu", "flash_cuda", "sdpa")
LSE_USERS = ("chunked", "fused", "triton")  # kernels that skip a pass when given the row LSE


def check_impl(impl, env=None) -> None:
    """Raise ``ValueError`` (with the valid list) for an unknown ``impl`` or ``INTERP_ATTN_IMPL`` value."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {list(IMPLS)}, got {impl!r}")
    env_impl(env)


def env_impl(env=None) -> str | None:
    """The implementation ``INTERP_ATTN_IMPL`` forces (None when unset or "auto")."""
    value = (os.environ if env is None else env).get(ENV, "")
    if value and value not in IMPLS:
        raise ValueError(f"{ENV}={value!r} is not an implementation; set it to one of {list(IMPLS)} or unset it")
    return None if value in ("", "auto") else value


@dataclass(frozen=True)
class Request:
    """What is asked of one attention layer (or one ``compute_attention_stats`` call)."""

    device: str  # "cpu", "cuda", "cuda:1", ...
    dtype: torch.dtype  # float64 if q or k is float64, else bfloat16 if either is, else q's dtype
    query_pos: int
    key_pos: int
    stats: frozenset = field(default_factory=frozenset)  # statistic names; empty: no statistics
    impl: str = "auto"
    want_output: bool = False  # the caller takes the layer output from the statistics kernel if it can
    lse_wanted: bool = False  # the caller uses a row LSE from the forward
    row_lse: bool = False  # a row LSE is already given
    padding: bool = False  # a key padding mask is in force
    attention_mask: bool = False  # HF passed an explicit mask (padding, or a sliding layer's mask)
    window: int | None = None
    softcap: float | None = None
    pattern: bool = False  # a hook needs the [query_pos, key_pos] pattern

    @classmethod
    def of(cls, q: torch.Tensor, k: torch.Tensor, **kw) -> Request:
        """Request for q ``[batch, head, query_pos, d_head]``, k ``[batch, kv_head, key_pos, d_head]``."""
        return cls(str(q.device), _dtype_of(q, k), q.shape[2], k.shape[2], **kw)

    @property
    def kind(self) -> str:
        return torch.device(self.device).type


@dataclass(frozen=True)
class Plan:
    """The dispatcher's decision."""

    impl: str | None  # "reference" | "chunked" | "fused" | "triton"; None when no statistics are asked
    forward: str = "sdpa"  # one of FORWARDS: how a forward computes the layer output
    fallback: str | None = None  # kernel run instead (with a warning) if ``impl`` fails to compile
    warning: str | None = None  # one line: why auto did not take the device's default kernel
    reason: str = ""

    @property
    def fused_output(self) -> bool:
        return self.forward == "fused"

    @property
    def lse_forward(self) -> bool:
        return self.forward in ("flash_cpu", "flash_cuda")


@dataclass(frozen=True)
class Caps:
    """What can run in this process (fixed values, for tests; ``LiveCaps`` probes the real ones)."""

    fused_cpu_error: str | None = None  # None: the fused C kernel loads; else why it does not
    triton_error: str | None = None  # None: triton imports
    cuda_capability: tuple[int, int] | None = None
    triton_interpret: bool = False
    flash_cpu_lse: bool = True
    flash_cuda_lse: bool = False


class LiveCaps:
    """``Caps`` of this process for one device, each probed on first use (so nothing is built that is not needed)."""

    flash_cuda_lse = False  # turn on once aten._scaled_dot_product_flash_attention's LSE path has run on a GPU

    def __init__(self, device: str):
        self.device = torch.device(device)

    @cached_property
    def fused_cpu_error(self) -> str | None:
        from . import fused_cpu

        try:
            fused_cpu.load()
        except RuntimeError as e:
            return str(e)
        return None

    @cached_property
    def triton_error(self) -> str | None:
        try:
            import triton  # noqa: F401
        except Exception as e:  # pragma: no cover - depends on the environment
            return f"{type(e).__name__}: {e}"
        return None

    @cached_property
    def cuda_capability(self) -> tuple[int, int] | None:
        if self.device.type != "cuda" or not torch.cuda.is_available():
            return None
        return tuple(torch.cuda.get_device_capability(self.device))

    @property
    def triton_interpret(self) -> bool:
        return os.environ.get("TRITON_INTERPRET") == "1"

    @cached_property
    def flash_cpu_lse(self) -> bool:
        return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")


def plan(req: Request, caps=None, env=None) -> Plan:
    """Decide the statistics kernel and the forward for ``req`` (see the module's table).

    ``caps``: a ``Caps`` (default: probe this process); ``env``: a mapping read instead of ``os.environ``.
    Raises ``ValueError`` (``RuntimeError`` when the fused C kernel cannot be built) for an explicit ``impl``
    that cannot run here.
    """
    if not req.stats:
        return Plan(None, _pattern_or(req, "sdpa"), reason="no statistics asked")
    caps = LiveCaps(req.device) if caps is None else caps
    check_impl(req.impl, env)
    forced = env_impl(env) if req.impl == "auto" else None
    impl, src = (forced, f"{ENV}={forced!r}") if forced else (req.impl, f"impl={req.impl!r}")
    if impl == "auto":
        impl, fallback, warning, reason = _auto(req, caps)
    else:
        _check_explicit(impl, src, req, caps)
        fallback, warning, reason = None, None, f"{src} asked"
    return Plan(impl, _forward(req, impl, caps), fallback, warning, reason)


# --- the steps ---------------------------------------------------------------------------------------------------
def _dtype_of(q: torch.Tensor, k: torch.Tensor) -> torch.dtype:
    for dt in (torch.float64, torch.bfloat16):
        if dt in (q.dtype, k.dtype):
            return dt
    return q.dtype


def _fused_unsupported(req: Request, caps) -> str | None:
    """Why the fused CPU kernel cannot serve ``req`` (None: it can)."""
    from .fused_cpu import SUPPORTED

    if req.kind != "cpu":
        return "not a CPU tensor"
    if not req.stats <= SUPPORTED:
        return f"it does not compute {sorted(req.stats - SUPPORTED)}"
    if req.dtype == torch.float64:
        return "float64 inputs"
    return caps.fused_cpu_error


def _auto(req: Request, caps):
    """``(impl, fallback, warning, reason)`` for impl="auto"."""
    if req.kind == "cuda":
        return _auto_cuda(req, caps)
    if req.kind == "cpu":
        why = _fused_unsupported(req, caps)
        if why is None:
            return "fused", None, None, "CPU default: the fused kernel"
        return "chunked", None, None, f"CPU, fused kernel not used ({why})"
    return "chunked", None, None, f"{req.kind} device: the torch-only path"


def _auto_cuda(req: Request, caps):
    if req.dtype == torch.float64:
        return "chunked", None, None, "float64 on CUDA: the Triton kernels compute in float32"
    if caps.triton_error is not None:
        why = f"triton is not importable ({caps.triton_error})"
        return "chunked", None, f"attention statistics: {why}; using the chunked path", why
    cc = caps.cuda_capability
    if req.dtype == torch.bfloat16 and cc is not None and cc < (8, 0):
        why = f"bfloat16 needs sm80+ for the Triton kernels (this GPU is sm{cc[0]}{cc[1]})"
        return "chunked", None, f"attention statistics: {why}; using the chunked path", why
    return "triton", "chunked", None, "CUDA default: the Triton kernels"


def _check_explicit(impl: str, src: str, req: Request, caps) -> None:
    if impl == "fused":
        _check_fused(src, req, caps)
    elif impl == "triton":
        _check_triton(src, req, caps)


def _check_fused(src: str, req: Request, caps) -> None:
    from .fused_cpu import SUPPORTED

    if req.kind != "cpu":
        raise ValueError(f"{src} is the CPU path; use impl='triton' (or 'auto') for {req.kind} tensors")
    if not req.stats <= SUPPORTED:
        raise ValueError(f"{src}: the fused path does not compute {sorted(req.stats - SUPPORTED)}; use impl='chunked'")
    if req.dtype == torch.float64:
        raise ValueError(f"{src}: the fused path computes in float32; use impl='chunked' for float64 inputs")
    if caps.fused_cpu_error is not None:
        raise RuntimeError(caps.fused_cpu_error)


def _check_triton(src: str, req: Request, caps) -> None:
    if caps.triton_error is not None:
        raise ValueError(f"{src} requested but triton is not importable ({caps.triton_error})")
    if req.kind == "cpu":
        if not caps.triton_interpret:
            raise ValueError(f"{src} on CPU tensors needs TRITON_INTERPRET=1 (set it before import)")
        if req.dtype == torch.bfloat16:
            raise ValueError(f"{src} on CPU (TRITON_INTERPRET=1) takes fp16/fp32/fp64, not bfloat16")
    cc = caps.cuda_capability
    if req.kind == "cuda" and req.dtype == torch.bfloat16 and cc is not None and cc < (8, 0):
        raise ValueError(f"{src}: bfloat16 Triton kernels need sm80+ (this GPU is sm{cc[0]}{cc[1]}); "
                         "use impl='chunked' or 'auto'")


def _pattern_or(req: Request, forward: str) -> str:
    return "eager" if req.pattern or req.softcap is not None else forward


def _forward(req: Request, impl: str, caps) -> str:
    plain = not (req.padding or req.attention_mask or req.pattern or req.softcap is not None)
    if plain and req.want_output and impl == "fused":
        return "fused"
    if plain and req.lse_wanted and impl in LSE_USERS and not req.row_lse and _flash_fits(req):
        if req.kind == "cpu" and req.dtype in (torch.float32, torch.float64) and caps.flash_cpu_lse:
            return "flash_cpu"
        cc = caps.cuda_capability
        if (req.kind == "cuda" and req.dtype in (torch.float16, torch.bfloat16) and cc is not None
                and cc >= (8, 0) and caps.flash_cuda_lse):
            return "flash_cuda"
    return _pattern_or(req, "sdpa")


def _flash_fits(req: Request) -> bool:
    """The flash ops' causal mask is top-left aligned and has no window: only square, windowless calls."""
    return req.query_pos == req.key_pos and (req.window is None or req.key_pos <= req.window)
