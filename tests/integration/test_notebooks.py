"""Every ``notebooks/*.py`` (jupytext percent format) converts to a notebook and executes without error.

The notebooks run on the random ``tiny-llama`` (``INTERP_NOTEBOOK_MODEL``) so the test stays fast; the
assertions inside them (pattern rows sum to 1, patching the last residual stream restores clean logits, …)
are what can fail. Executed notebooks are written to a temp folder, not into the repo.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.py"))


@pytest.mark.slow  # a Jupyter kernel start + imports: ~20-70 s per notebook on 2 busy cores
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    text = path.read_text()
    for line in text.splitlines():  # notebooks use only the public API
        if line.startswith(("import interp", "from interp")):
            module = line.split()[1]  # public API: interp and its non-private submodules
            assert module.split(".")[0] == "interp" and not any(p.startswith("_") for p in module.split(".")), line
    nb = jupytext.reads(text, fmt="py:percent")
    monkeypatch.setenv("INTERP_NOTEBOOK_MODEL", "tiny-llama")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    nbformat.write(nb, tmp_path / f"{path.stem}.ipynb")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert sum(c.cell_type == "code" for c in nb.cells) >= 4
