"""Every package folder is listed in pyproject (so analyses/ and kernels/ install only as interp.*)."""

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_declared():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(cfg["packages"])
    mapping = cfg["package-dir"]
    found = set()
    for pkg, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            parts = [] if str(rel) == "." else list(rel.parts)
            if any(p.startswith((".", "_")) or p == "__pycache__" for p in parts):
                continue
            found.add(".".join([pkg, *parts]))
    assert found <= declared, f"add these to [tool.setuptools] packages: {sorted(found - declared)}"


def test_import_is_cheap_and_lazy():
    import subprocess
    import sys

    code = "import sys, interp; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
