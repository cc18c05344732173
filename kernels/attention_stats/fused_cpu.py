"""Fused CPU path: torch matmul for each logits tile + one C sweep per row for every statistic.

Same formulas as ``reference.py`` (the spec) and ``chunked.py``; the difference is only where the work happens.
The chunked path reduces a tile with ~10 torch ops, each a full pass over the tile in memory; here

    S = (scale q) k^T                       one torch.matmul per (query strip, key tile), GQA views, fp32
    fused_cpu.c, per row of S, in cache:    softcap, masks, m = max_j s, argmax (earliest index on ties),
                                            A = exp(s - lse)  (lse from SDPA's flash kernel, or computed here
                                            when the tile holds the whole row, or by an online pass first),
                                            entropy = sum_j A (lse - s), column sums, the band statistics
                                            (first-k, recent window, distance, self, previous token) only over
                                            their keys, duplicate / induction by token comparison

so each logit is written once by the matmul and read about twice.  Inside a forward pass the flash SDPA op
already returns the row LSE, so tiles can be small 2-D blocks (``q_tile`` x ``k_tile``) that stay in cache.

The C source sits beside this file; it is compiled on first use with the system C compiler into
``$INTERP_CACHE_DIR/kernels`` (default ``~/.cache/interp/kernels``; atomic rename, keyed by source, compiler
and CPU) and loaded with ctypes.  ``available()`` says whether that worked; ``impl="auto"`` then uses this path
on CPU for float32/16 inputs and falls back to ``chunked`` otherwise (no compiler, ``INTERP_FUSED_CPU=0``,
float64 inputs, or ``topk``).  Parity: tests/kernels/test_fused_cpu.py; speed: benchmarks/attention_stats*.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from ._spec import StatsSpec, finalize, row_valid

SUPPORTED = frozenset({
    "lse", "max", "entropy", "entropy_norm", "argmax", "mass_first", "mass_keyset", "mass_recent", "mass_self",
    "attn_distance", "prev_token", "duplicate", "induction", "col_sum", "col_alpha", "col_entropy"})
NEG = -1.0e30
_FLAGS = {"entropy": 1, "entropy_norm": 1, "col_sum": 2, "col_alpha": 2, "col_entropy": 2 | 4, "max": 8,
          "argmax": 8, "mass_first": 16, "mass_keyset": 32, "mass_recent": 64, "mass_self": 128,
          "prev_token": 256, "attn_distance": 512, "duplicate": 1024, "induction": 2048}
F_LSE_INLINE, F_LSE_PASS, F_WRITE_P = 4096, 8192, 16384
_ROW_ACC = ("entropy", "mass_first", "mass_keyset", "mass_recent", "mass_self", "prev_token", "attn_distance",
            "duplicate", "induction")
_ROW_FIELDS = ("ent", "first", "kset", "recent", "self_", "prev", "dist", "dup", "ind")
_TILE_ELEMS = 2**22  # logits per tile (16 MB): tall enough strips for efficient matmuls, still in L3-ish

_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Args(ctypes.Structure):
    _fields_ = ([(n, _I) for n in ("BH", "H", "T", "W", "Q", "N", "q0", "a0", "j0", "window", "sink_k",
                                   "recent_w", "dist_cap", "flags", "nthreads")]
                + [("softcap", ctypes.c_double)]
                + [(n, _P) for n in ("S", "lse", "rl", "kpm", "keyset", "tok", "mx", "amax", *_ROW_FIELDS,
                                     "col", "calog", "colbuf", "pbuf")])


_LIB: ctypes.CDLL | None = None
_ERROR: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("INTERP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "interp")
    return Path(root) / "kernels"


def _build(src: Path) -> Path:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or set CC)")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    cpu = ""
    try:
        cpu = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        cpu = platform.processor()
    cflags = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC"]
    key = hashlib.sha256("\n".join([src.read_text(), ver, cpu, " ".join(cflags)]).encode()).hexdigest()[:16]
    out = _cache_dir() / f"fused_cpu_{key}.so"
    if out.exists():
        return out
    from interp.io import atomic_path  # standard library only: keeps interp.kernels importable on its own

    out.parent.mkdir(parents=True, exist_ok=True)
    # atomic: a concurrent build or a kill never leaves a half-written library
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, atomic_path(out, mode=0o777) as so:
        obj = Path(tmp) / "k.o"
        # -ffast-math only when compiling: linking with it would pull in crtfastmath (process-wide flush-to-zero)
        for cmd in ([cc, *cflags, "-c", str(src), "-o", str(obj)],
                    [cc, "-shared", "-fopenmp", str(obj), "-o", str(so), "-lm"]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise RuntimeError(f"compiling the fused CPU kernel failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return out


def load() -> ctypes.CDLL:
    """The compiled kernel (built on first call); raises RuntimeError saying why when it cannot be built."""
    global _LIB, _ERROR
    if _LIB is not None:
        return _LIB
    if os.environ.get("INTERP_FUSED_CPU", "1") == "0":
        raise RuntimeError("the fused CPU kernel is disabled by INTERP_FUSED_CPU=0")
    if _ERROR is not None:
        raise RuntimeError(_ERROR)
    try:
        lib = ctypes.CDLL(str(_build(Path(__file__).with_suffix(".c"))))
        lib.interp_tile_stats.argtypes = [ctypes.POINTER(_Args)]
        lib.interp_tile_stats.restype = ctypes.c_int
        if lib.interp_abi_version() != 1:
            raise RuntimeError("stale fused CPU kernel library (ABI mismatch); delete ~/.cache/interp/kernels")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _ERROR = f"fused CPU kernel unavailable: {e}"
        raise RuntimeError(_ERROR) from e
    _LIB = lib
    return lib


def available() -> bool:
    try:
        load()
    except RuntimeError:
        return False
    return True


def supports(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec) -> bool:
    """True when this path handles the call (CPU, not float64, no top-k) and the kernel is available."""
    return (q.device.type == "cpu" and torch.float64 not in (q.dtype, k.dtype) and spec.stats <= SUPPORTED
            and available())


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _plan(spec: StatsSpec, B, H, Q, q_tile, k_tile, tile_elems) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """Row strips ``(q0, T, [(j0, j1), ...])``: each strip's causal (and windowed) key range in key tiles; a
    strip is "single" when one key tile covers all its allowed keys."""
    off = spec.query_offset

    def lo_of(a0):
        return 0 if spec.window is None else max(0, a0 - spec.window + 1)

    if spec.row_lse is not None:  # the one-pass kernel: fixed tiles
        k_tile = k_tile or 512
        q_tile = q_tile or max(1, min(128, tile_elems // (B * H * k_tile)))
    plan, q0 = [], 0
    while q0 < Q:
        if q_tile:
            T = min(q_tile, Q - q0)
        else:
            T = 256
            while T > 1 and B * H * T * (q0 + off + T - lo_of(q0 + off)) > tile_elems:
                T //= 2
            T = min(T, Q - q0)
        a0 = q0 + off
        kt = k_tile or max(1, tile_elems // (B * H * T))
        plan.append((q0, T, [(j, min(a0 + T, j + kt)) for j in range(lo_of(a0), a0 + T, kt)]))
        q0 += T
    return plan


def _flags(st) -> int:
    flags = 0
    for name in st:
        flags |= _FLAGS.get(name, 0)
    return flags


class _Launch:
    """The buffers and kernel arguments of one ``fused_stats`` call; ``tile`` runs the C sweep on one tile."""

    def __init__(self, q, k, v, spec: StatsSpec, plan):
        B, H, Q, D = q.shape
        KV, N = k.shape[1], k.shape[2]
        st, dev, nt = spec.stats, q.device, max(1, torch.get_num_threads())
        self.B, self.H, self.Q, self.D, self.KV, self.G, self.N = B, H, Q, D, KV, H // KV, N
        self.off, self.lib = spec.query_offset, load()
        f32 = dict(dtype=torch.float32, device=dev)
        pre = spec.scale / spec.softcap if spec.softcap is not None else spec.scale
        self.qg = (q.float() * pre).view(B, KV, self.G, Q, D)
        self.kT = k.float().transpose(-1, -2).contiguous()  # [batch, kv_head, d_head, key_pos]
        self.v3 = None if v is None else v.float().contiguous().view(B * KV, N, D)
        self.hint = spec.row_lse is not None
        self.lse = spec.row_lse.float().contiguous().clone() if self.hint else torch.full((B, H, Q), NEG, **f32)
        w_max = max(j1 - j0 for _, _, tiles in plan for j0, j1 in tiles)
        self.buf = torch.empty(max(B * H * T * (j1 - j0) for _, T, tiles in plan for j0, j1 in tiles), **f32)
        self.need_col = bool(st & {"col_sum", "col_alpha", "col_entropy"})
        colbuf = torch.empty(nt * 2 * B * H * w_max, **f32) if self.need_col else None
        pbuf = torch.empty(nt * w_max, **f32)
        self.ostrip = torch.empty(B * H * max(T for _, T, _ in plan) * D, **f32) if v is not None else None
        self.acc = {name: torch.zeros(B, H, Q, **f32) for name in _ROW_ACC
                    if name in st or (name == "entropy" and "entropy_norm" in st)}
        self.mx = torch.full((B, H, Q), NEG, **f32)
        self.amax = torch.full((B, H, Q), -1, dtype=torch.int64, device=dev)
        self.col = torch.zeros(B, H, N, **f32) if self.need_col else None
        self.calog = torch.zeros(B, H, N, **f32) if "col_entropy" in st else None
        self.rl = torch.zeros(B, H, Q, **f32)
        u8 = lambda m: None if m is None else m.to(torch.uint8).contiguous()  # noqa: E731
        self.keep = (u8(spec.key_padding_mask), u8(spec.key_set),
                     None if spec.token_ids is None else spec.token_ids.contiguous(), colbuf, pbuf)
        kpm, kset, tok = self.keep[:3]
        self.args = _Args(
            BH=B * H, H=H, Q=Q, N=N, window=spec.window or 0, sink_k=spec.sink_k, recent_w=spec.recent_w,
            dist_cap=-1 if spec.distance_cap is None else spec.distance_cap, nthreads=nt,
            softcap=spec.softcap or 0.0, S=_ptr(self.buf), lse=_ptr(self.lse), rl=_ptr(self.rl), kpm=_ptr(kpm),
            keyset=_ptr(kset), tok=_ptr(tok), mx=_ptr(self.mx), amax=_ptr(self.amax), col=_ptr(self.col),
            calog=_ptr(self.calog), colbuf=_ptr(colbuf), pbuf=_ptr(pbuf),
            **{f: _ptr(self.acc.get(n)) for n, f in zip(_ROW_ACC, _ROW_FIELDS)})
        self.ap = ctypes.byref(self.args)

    def tile(self, q0, T, j0, j1, fl, first=True):
        """Logits of rows q0..q0+T-1 × keys j0..j1-1 (one matmul), the C sweep over them, and with ``v`` the
        attention output rows ``+= A @ v`` from the same tile."""
        B, KV, G, D, W = self.B, self.KV, self.G, self.D, j1 - j0
        S = self.buf[: B * self.H * T * W].view(B, KV, G * T, W)
        torch.matmul(self.qg[:, :, :, q0 : q0 + T].reshape(B, KV, G * T, D), self.kT[..., j0:j1], out=S)
        if self.v3 is not None and not fl & F_LSE_PASS:
            fl |= F_WRITE_P
        a = self.args
        a.T, a.W, a.q0, a.a0, a.j0, a.flags = T, W, q0, q0 + self.off, j0, fl
        self.lib.interp_tile_stats(self.ap)
        if fl & F_WRITE_P:  # S now holds A (0 where masked): out rows += A @ v
            o = self.ostrip[: B * KV * G * T * D].view(B * KV, G * T, D)
            if first:
                torch.bmm(S.view(B * KV, G * T, W), self.v3[:, j0:j1], out=o)
            else:
                o.baddbmm_(S.view(B * KV, G * T, W), self.v3[:, j0:j1])

    def strip(self, q0, T, tiles, flags):
        """Every statistic of one row strip: inline LSE (one tile), given LSE, or an online-LSE pass first."""
        if not self.hint and len(tiles) == 1:
            self.tile(q0, T, *tiles[0], flags | F_LSE_INLINE)
            return
        if not self.hint:  # online LSE over the key tiles first, then the statistics pass
            for j0, j1 in tiles:
                self.tile(q0, T, j0, j1, F_LSE_PASS)
            sl = self.lse[:, :, q0 : q0 + T]
            sl.copy_(sl + torch.log(self.rl[:, :, q0 : q0 + T].clamp_min(1e-30)))
        for n_t, (j0, j1) in enumerate(tiles):
            self.tile(q0, T, j0, j1, flags, first=n_t == 0)

    def outputs(self, spec: StatsSpec) -> dict:
        st, acc = spec.stats, self.acc
        valid = row_valid(spec, self.B, self.Q, self.lse.device)[:, None, :]
        out = {name: acc[name] for name in _ROW_ACC if name in acc and name in st}
        if "entropy" in acc:
            out["entropy" if "entropy" in st else "_entropy"] = torch.where(valid, acc["entropy"], 0.0).clamp(min=0)
        if "lse" in st:
            out["lse"] = torch.where(valid, self.lse, -torch.inf)
        if "max" in st:
            out["max"] = torch.where(valid, self.mx, -torch.inf)
        if "argmax" in st:
            out["argmax"] = torch.where(valid, self.amax, -1)
        if self.need_col:
            out["col_sum" if "col_sum" in st else "_col_sum"] = self.col
        if self.calog is not None:
            out["_col_alogA"] = self.calog
        return out


@torch.no_grad()
def fused_stats(q: torch.Tensor, k: torch.Tensor, spec: StatsSpec, *, v: torch.Tensor | None = None,
                q_tile: int | None = None, k_tile: int | None = None, tile_elems: int = _TILE_ELEMS):
    """Statistics of ``spec`` from q [batch, head, query_pos, d_head], k [batch, kv_head, key_pos, d_head].

    Returns row stats [batch, head, query_pos] and column stats [batch, head, key_pos] in float32 (as
    ``chunked_stats``).  ``q_tile``/``k_tile`` override the tile shape (tests use them to force many tiles).
    With ``v`` [batch, kv_head, key_pos, d_head] it returns ``(out, stats)``: also the attention output
    ``out = A @ v`` [batch, head, query_pos, d_head] (float32; 0 for padding rows) from the same tiles, so a
    forward pass needs no separate SDPA call.
    """
    if not spec.stats <= SUPPORTED:
        raise ValueError(f"the fused CPU path does not compute {sorted(spec.stats - SUPPORTED)}; use impl='chunked'")
    if v is not None and v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)} ([batch, kv_head, key_pos, d_head]), "
                         f"got {tuple(v.shape)}")
    B, H, Q, D = q.shape
    plan = _plan(spec, B, H, Q, q_tile, k_tile, tile_elems)
    run = _Launch(q, k, v, spec, plan)
    flags = _flags(spec.stats)
    out_v = torch.empty(B, run.KV, run.G, Q, D, dtype=torch.float32, device=q.device) if v is not None else None
    for q0, T, tiles in plan:
        run.strip(q0, T, tiles, flags)
        if v is not None:
            out_v[:, :, :, q0 : q0 + T] = run.ostrip[: B * run.KV * run.G * T * D].view(B, run.KV, run.G, T, D)
    res = finalize(run.outputs(spec), spec, B, Q, k.shape[2], q.device)
    return res if v is None else (out_v.view(B, H, Q, D), res)
