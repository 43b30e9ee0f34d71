"""The example notebook runs in a real Jupyter kernel, and a result displays as an image.

``examples/notebook.py`` (py:percent) is turned into a notebook cell by cell; a first cell starts
the emulator inside the kernel and points the notebook at it, a last one stops it. nbclient runs
the notebook in an ipykernel, as Jupyter would; the outputs then hold what a user would see.
Skipped where nbclient, nbformat or ipykernel are not installed.
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notebook.py"
PNG = b"\x89PNG\r\n\x1a\n"

# Runs in the kernel. A long sync window: the notebook's client uses the real-time poll policy,
# so the emulator answers at once rather than make it wait on a real-time schedule.
START_EMULATOR = """\
import os
from anyio.from_thread import start_blocking_portal
from dreambooth_async.emulator import CostModel, Emulator, EmulatorConfig

_portal_cm = start_blocking_portal("asyncio")
_portal = _portal_cm.__enter__()
_emulator = Emulator(EmulatorConfig(
    time_scale=0.01, sync_window=1000, spam_filter=False,
    cost=CostModel(base=2, per_step=0.1, per_sample=0, per_megapixel=0, noise=0),
))
_portal.call(_emulator.start)
os.environ["DREAMBOOTH_API_KEY"] = _emulator.key
os.environ["DREAMBOOTH_BASE_URL"] = _emulator.base_url
os.environ["NOTEBOOK_OUT"] = {out!r}
"""

STOP_EMULATOR = """\
_portal.call(_emulator.aclose)
_ = _portal_cm.__exit__(None, None, None)
"""


def percent_cells(source: str) -> list[Any]:
    """The cells of a py:percent script: ``# %%`` starts a code cell, ``# %% [markdown]`` a
    markdown one (whose lines lose their ``# ``); the jupytext header is left out."""
    cells = []
    for chunk in re.split(r"^# %%", source, flags=re.MULTILINE)[1:]:
        marker, _, body = chunk.partition("\n")
        body = body.strip("\n")
        if "[markdown]" in marker:
            text = "\n".join(re.sub(r"^# ?", "", line) for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cells.append(nbformat.v4.new_code_cell(body))
    return cells


def test_the_example_splits_into_cells() -> None:
    cells = percent_cells(EXAMPLE.read_text(encoding="utf-8"))
    kinds = [cell.cell_type for cell in cells]
    assert kinds.count("code") >= 4 and kinds.count("markdown") >= 3
    assert any("display(result)" in cell.source for cell in cells if cell.cell_type == "code")


def test_notebook_in_a_kernel_displays_results_as_png(tmp_path: Path) -> None:
    out = tmp_path / "images"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(START_EMULATOR.format(out=str(out))),
        *percent_cells(EXAMPLE.read_text(encoding="utf-8")),
        nbformat.v4.new_code_cell(STOP_EMULATOR),
    ]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    client = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the traceback, if any cell fails

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(o.output_type != "error" for cell in code for o in cell.outputs)
    shown = [cell for cell in code if cell.source.rstrip().endswith("display(result)")]
    assert len(shown) == 1
    displays = [o for o in shown[0].outputs if o.output_type == "display_data"]
    assert len(displays) == 1, shown[0].outputs
    data = displays[0].data
    assert "image/png" in data and "text/html" in data
    png = base64.b64decode(data["image/png"])
    assert png.startswith(PNG)
    with Image.open(io.BytesIO(png)) as picture:
        assert picture.size == (512, 512)
    assert "a watercolor fox in the snow" in data["text/html"]
    # The key is never shown: not in the repr the notebook prints, nor in any output.
    everything = str([cell.outputs for cell in code[1:]])
    assert "emulator-key" not in everything
    # The last cells saved the images where the notebook was told to: the fox and the batch.
    assert len(list(out.rglob("*.png"))) == 5
