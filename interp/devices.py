"""Devices, dtypes and device maps: where a model's layers live, and where each tensor has to go.

``load_model(spec, device=..., dtype=..., device_map=..., max_memory=..., offload_folder=...)`` resolves its
arguments here and places the model through ``accelerate``:

- ``device``: ``"cpu"``, ``"cuda"`` (= ``cuda:0``), ``"cuda:N"`` or ``"auto"`` (``cuda:0`` when a GPU is
  visible, else ``cpu``); the whole model on one device when ``device_map`` is None.
- ``device_map="auto"``: ``accelerate.infer_auto_device_map`` over ``max_memory`` (``{0: "70GiB", 1: "70GiB",
  "cpu": "200GiB"}``; default: what is free on every visible device), decoder layers never split; what does not
  fit goes to ``"disk"`` when ``offload_folder`` is given.
- ``device_map={module name: device}``: as given, e.g. ``{"model.embed_tokens": 0, "model.layers.0": 0,
  "model.layers.1": 1, ..., "lm_head": 1}``; ``"cpu"`` / ``"disk"`` values offload those modules' weights.

Offloaded modules keep ``meta`` parameters; accelerate's ``AlignDevicesHook`` loads them onto the execution
device while the module runs. Code that reads weights *outside* a module's own forward (the circuit graph's
per-head projections, the per-head ``head_out`` site) wraps the read in ``materialized(module)``; every tensor
is moved to ``execution_device(module)`` of the layer that uses it, and results are gathered on the CPU.
"""

from __future__ import annotations

import contextlib
import re

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}
OFFLOAD = ("cpu", "disk")


def parse_device(device) -> torch.device:
    """``"cpu" | "cuda" | "cuda:N" | "auto" | int | torch.device`` → ``torch.device``; one clear line otherwise."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, int) and not isinstance(device, bool):
        device = f"cuda:{device}"
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N' or 'auto'")
    dev = torch.device("cuda:0" if device == "cuda" else device)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {device!r} asked but no CUDA GPU is visible; use device='cpu' (or 'auto')")
        if dev.index >= n:
            raise ValueError(f"device {device!r} asked but only {n} GPU(s) are visible (cuda:0..cuda:{n - 1})")
    return dev


def parse_dtype(dtype) -> torch.dtype:
    """A ``torch.dtype`` or its name (``"bf16"``, ``"float16"``, ...) → ``torch.dtype``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))} (or a torch.dtype)")


def check_dtype(dtype: torch.dtype, devices) -> None:
    """Refuse a dtype a device cannot run: bf16 on a GPU below sm80 names float16 as the alternative.

    bf16 and fp16 run on the CPU (torch's CPU kernels take both; slower than fp32 without AVX512-BF16)."""
    for dev in {torch.device(d) for d in devices}:
        if dev.type == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(dev) < (8, 0):
            cc = torch.cuda.get_device_capability(dev)
            raise ValueError(f"bfloat16 needs an sm80+ GPU ({dev} is sm{cc[0]}{cc[1]}); use dtype='float16' "
                             "or 'float32'")


def parse_size(value) -> int:
    """Bytes from an int or a size string (``"24GiB"``, ``"500MB"``)."""
    from accelerate.utils import convert_file_size_to_int

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    try:
        out = convert_file_size_to_int(value)
    except (ValueError, TypeError, AttributeError):
        out = -1
    if not isinstance(out, int) or out < 0:
        raise ValueError(f"memory size {value!r} is not a size; write it as bytes or like '24GiB' / '500MB'")
    return out


def parse_max_memory(max_memory) -> dict | None:
    """``{device: size}`` with keys ``int`` (GPU index) / ``"cuda:N"`` / ``"cpu"`` / ``"disk"`` → ``{0: bytes,
    "cpu": bytes}`` as accelerate takes it (None stays None)."""
    if max_memory is None:
        return None
    if not isinstance(max_memory, dict) or not max_memory:
        raise ValueError(f"max_memory must be a dict like {{0: '20GiB', 'cpu': '64GiB'}}, got {max_memory!r}")
    out = {}
    for key, size in max_memory.items():
        if key in ("cpu", "disk"):
            out[key] = parse_size(size)
            continue
        dev = parse_device(f"cuda:{key}" if isinstance(key, int) else key)
        if dev.type == "cpu":
            out["cpu"] = parse_size(size)
        else:
            out[dev.index] = parse_size(size)
    return out


def _map_device(value):
    """One device-map value → accelerate's spelling (``int`` GPU index, ``"cpu"``, ``"disk"``, ``"meta"``)."""
    if value in ("disk", "meta"):
        return value
    dev = parse_device(value)
    return "cpu" if dev.type == "cpu" else dev.index


def resolve_device_map(hf, device_map, *, max_memory=None, offload_folder=None, dtype=None) -> dict:
    """The ``{module name: device}`` map for ``device_map`` (``"auto"`` or a dict), validated against ``hf``."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import check_device_map

    if device_map == "auto":
        dm = infer_auto_device_map(hf, max_memory=parse_max_memory(max_memory), dtype=dtype,
                                   no_split_module_classes=list(getattr(hf, "_no_split_modules", None) or []))
    elif isinstance(device_map, dict) and device_map:
        names = {n for n, _ in hf.named_modules()}
        bad = [k for k in device_map if k and k not in names]
        if bad:
            top = ", ".join(n for n, _ in hf.named_children())
            raise ValueError(f"device_map names module {bad[0]!r}, which the model does not have (top-level "
                             f"modules: {top}; layers like 'model.layers.0')")
        dm = {k: _map_device(v) for k, v in device_map.items()}
    else:
        raise ValueError(f"device_map must be None, 'auto' or a dict {{module name: device}}, got {device_map!r}")
    missing = [n for n, _ in hf.named_parameters() if not any(n == k or n.startswith(k + ".") or not k for k in dm)]
    if missing:
        raise ValueError(f"device_map places no device for {len(missing)} weight(s), e.g. {missing[0]!r}; "
                         "add their modules to the map (or use device_map='auto')")
    check_device_map(hf, dm)
    if "disk" in dm.values() and not offload_folder:
        raise ValueError("device_map offloads modules to 'disk': pass offload_folder=... (a folder for the weights)")
    return dm


def place(hf, device, device_map=None, *, max_memory=None, offload_folder=None):
    """Put an already loaded ``hf`` model on ``device``, or spread it by ``device_map`` (see the module doc)."""
    if device_map is None:
        return hf.to(parse_device(device))
    dm = resolve_device_map(hf, device_map, max_memory=max_memory, offload_folder=offload_folder,
                            dtype=next(hf.parameters()).dtype)
    from accelerate import dispatch_model

    gpus = sorted(v for v in dm.values() if isinstance(v, int))
    main = torch.device(f"cuda:{gpus[0]}") if gpus else torch.device("cpu")
    values = set(dm.values())
    if len(values) == 1 and not values & {"disk", "meta"}:  # one device, nothing offloaded: a plain move
        return hf.to(main)
    return dispatch_model(hf, device_map=dm, main_device=main, offload_dir=offload_folder)


# --- where tensors go -----------------------------------------------------------------------------------------
def execution_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device when it dispatched the module (offloaded
    weights included), else the device of its first real (non-meta) parameter or buffer, else the CPU."""
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is not None:
            return torch.device(dev if not isinstance(dev, int) else f"cuda:{dev}")
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def devices_of(hf) -> list[torch.device]:
    """Every execution device the model's modules use (one entry for a single-device model)."""
    dm = getattr(hf, "hf_device_map", None)
    if not dm:
        return [execution_device(hf)]
    out = []
    for v in dm.values():
        dev = torch.device("cpu") if v in OFFLOAD or v == "meta" else torch.device(
            f"cuda:{v}" if isinstance(v, int) else v)
        if dev not in out:
            out.append(dev)
    return out


@contextlib.contextmanager
def materialized(*modules: torch.nn.Module):
    """Within the block, the weights of ``modules`` (and their submodules) are real tensors on their execution
    device even where accelerate offloaded them (``meta`` parameters); offloaded again on exit.

    Use only around direct weight reads: a module *called* inside the block runs its own offload hook."""
    from accelerate.utils import align_module_device, has_offloaded_params

    with contextlib.ExitStack() as stack:
        for mod in modules:
            for sub in mod.modules():
                if has_offloaded_params(sub):
                    stack.enter_context(align_module_device(sub))
        yield


def to_device(x, device):
    """``x`` (a tensor, None, or a dict of them) with every tensor on ``device`` (no copy when already there)."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    return x


def to_cpu(x):
    """``x`` (a tensor, or a dict / list / tuple of them) with every tensor moved to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, dict):
        return {k: to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_cpu(v) for v in x)
    return x
