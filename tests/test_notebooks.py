"""The notebooks in examples/ run in a real Jupyter kernel (nbclient), and a cell interrupted
mid-fit through the kernel, as the notebook's stop button does, continues exactly."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("ipywidgets")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "examples").glob("*.ipynb"))
STEPS = 40  # the tests' budget: a few steps of the first epoch, then its evaluation


def execute(path: Path) -> Any:
    notebook = nbformat.read(path, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    parameters.source = f"max_epochs = 1\nmax_steps = {STEPS}"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", store_widget_state=True)
    client.execute(cwd=str(path.parent))
    return notebook


def outputs_of(notebook: Any, code: str) -> list[Any]:
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(code)]
    return list(cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_and_shows_bar_curves_and_results(path: Path) -> None:
    notebook = execute(path)
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [w["state"] for w in widgets.values() if w["model_name"] == "FloatProgressModel"]
    # one bar for the fit (the cell that continues after a complete fit draws none), ended full
    assert [(b["value"], b["max"], b["bar_style"]) for b in bars] == [(STEPS, STEPS, "success")]
    labels = [w["state"]["value"] for w in widgets.values() if w["model_name"] == "HTMLModel"]
    assert any(f"{STEPS}/{STEPS}" in label for label in labels)

    fit = outputs_of(notebook, "torch.manual_seed(0)")
    live = [o for o in fit if "text/html" in o.get("data", {})]
    assert len(live) == 1, "the curves live in one display area"
    html = live[0]["data"]["text/html"]
    redraws = int(re.search(r'data-redraws="(\d+)"', html).group(1))
    assert redraws >= 1 and "<th>status</th><td>completed</td>" in html  # drawn as "running", updated in place
    assert "<svg" in html and ">train_loss<" in html and ">val_loss<" in html

    (shown,) = outputs_of(notebook, "trainer")
    inline = shown["data"]["text/html"]
    assert f"<th>step</th><td>{STEPS}</td>" in inline and "<th>val_accuracy</th>" in inline and "<svg" in inline
    printed = "".join(o.get("text", "") for o in outputs_of(notebook, "result = trainer.evaluate"))
    accuracy = float(re.search(r"(0\.\d{4})", printed).group(1))
    assert accuracy > 0.5  # 40 steps of SGD on the MNIST sample: far above chance (0.1)


SETUP = """
import time
import torch
from torch import nn
from torchsmith import Trainer
from torchsmith.callbacks import Callback

generator = torch.Generator().manual_seed(0)
labels = torch.randint(0, 4, (256,), generator=generator)
inputs = (torch.randn(4, 8, generator=generator) * 3)[labels] + torch.randn(256, 8, generator=generator)
data = (inputs, labels)


class Slowly(Callback):
    '''Sleeps after each step, so that an interrupt lands mid-fit; prints once step 5 is done.'''

    def on_step_end(self, trainer):
        if trainer.state.step == 5:
            print("reached step 5", flush=True)
        time.sleep(0.05)


def make_trainer(*callbacks):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
    return Trainer(model, optimizer="adamw", max_epochs=3, batch_size=32, progress="none", callbacks=list(callbacks))
"""

COMPARE = """
trainer.fit(data)
expected = make_trainer()
expected.fit(data)
print(json.dumps({"status": trainer.state.status, "step": trainer.state.step, "same": all(
    torch.equal(a, b) for a, b in zip(trainer.model.state_dict().values(), expected.model.state_dict().values())
)}))
"""


def run_cell(client: Any, code: str) -> str:
    """Execute `code` in the kernel; its standard output (an error fails the test)."""
    printed: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
            printed.append(message["content"]["text"])

    reply = client.execute_interactive(code, timeout=120, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(printed)


def test_interrupting_a_cell_mid_fit_then_fitting_again_is_exact() -> None:
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        run_cell(client, SETUP + "\nimport json\ntrainer = make_trainer(Slowly())")
        message_id = client.execute("history = trainer.fit(data)")
        while True:  # wait until the fit is under way, then press "interrupt"
            message = client.get_iopub_msg(timeout=120)
            content = message["content"]
            if message["msg_type"] == "stream" and "reached step 5" in content.get("text", ""):
                break
        manager.interrupt_kernel()
        reply = client.get_shell_msg(timeout=120)
        assert reply["parent_header"]["msg_id"] == message_id
        assert reply["content"]["status"] == "ok"  # fit returned: no KeyboardInterrupt in the cell
        stopped = json.loads(run_cell(client, "print(json.dumps([trainer.state.status, trainer.state.step]))"))
        assert stopped[0] == "stopped" and 5 <= stopped[1] < 24  # 24 steps: 3 epochs of 8
        result = json.loads(run_cell(client, COMPARE))
        assert result == {"status": "completed", "step": 24, "same": True}  # bitwise-equal weights
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
