"""tutorial.ipynb runs from top to bottom on the real corpus, and the checks in its cells hold.

The notebook is stored with its outputs, so that it reads on a code host. After editing it, store
fresh outputs with

    PTB_DATA=folder/with/ptb.train.txt python tests/test_tutorial.py

which executes it exactly as the test does and writes it back.
"""
import os
import sys

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import ROOT  # noqa: E402

NOTEBOOK = os.path.join(ROOT, "tutorial.ipynb")
KERNEL = "python3"  # the kernel ipykernel provides (installed with it by pip); run with this very interpreter


def execute(path=NOTEBOOK):
    """The notebook, executed in a fresh kernel with the repository as its working folder.

    Raises nbclient's CellExecutionError, which names the failing cell and shows its traceback,
    if any cell fails (an assert in a cell included).
    """
    assert KERNEL in KernelSpecManager().find_kernel_specs(), (
        f"no {KERNEL!r} Jupyter kernel: pip install -r requirements.txt (ipykernel provides it)")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=900, kernel_name=KERNEL, resources={"metadata": {"path": ROOT}})
    client.execute()
    return notebook


def text_outputs(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")


def images(notebook):
    return [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]


def check_outputs(notebook):
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))  # every cell, in order, once
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    everything = "".join(text_outputs(cell) for cell in code)
    for expected in ("vocabulary: 10,000 words", "x, y: (20, 20) int32", "final_state                  (2, 2, 20, 200)",
                     "with respect to window 1's word vectors: [None]", "epoch 3: learning rate 1.00",
                     "state reset at every window", "$ python lm.py predict"):
        assert expected in everything
    assert len(images(notebook)) == 4  # gradient reach, learning rates, training curve, trained reach


def test_stored_notebook_holds_its_outputs():
    """The committed notebook was executed top to bottom (tests/test_tutorial.py as a script), not hand-edited."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == KERNEL
    check_outputs(notebook)


@pytest.mark.long
def test_notebook_runs_and_its_checks_hold(ptb_path, tmp_path):
    """Executes every cell (each holds asserts on the values it prints); floats are not compared to the stored run.

    The executed notebook is kept in the test's tmp_path, to look at when a check fails."""
    executed = execute()
    nbformat.write(executed, tmp_path / "tutorial.ipynb")
    check_outputs(executed)


if __name__ == "__main__":
    if not os.environ.get("PTB_DATA"):
        sys.exit("set PTB_DATA to the folder with ptb.train.txt, ptb.valid.txt and ptb.test.txt")
    executed = execute()
    check_outputs(executed)
    nbformat.write(executed, NOTEBOOK)
    print(f"{NOTEBOOK}: executed and written with its outputs")
