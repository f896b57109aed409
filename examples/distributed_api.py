"""The Python API on several processes: the same script, run by torchrun or plainly.

    torchrun --standalone --nproc-per-node 2 examples/distributed_api.py   # 2 processes (DDP)
    python examples/distributed_api.py                                     # 1 process

Under torchrun the Trainer joins the process group, gives each process its slice of every
global batch of 256, and sums the metrics over the processes: both print the same history,
up to floating-point rounding.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.registry import load_data
from torchsmith.io import rank

epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
bundle = load_data(DataConfig(name="mnist-sample", val_fraction=0.1), seed=0)
torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
trainer = Trainer(
    model, loss="cross_entropy", optimizer="sgd", max_epochs=epochs, batch_size=256, device="cpu", progress="none"
)
history = trainer.fit(bundle.train, bundle.val)  # each process builds only its rows of every batch
test = trainer.evaluate(bundle.test)  # every test sample counted once, over all processes
if rank.is_writer():  # rank 0 prints (and would write files)
    print(json.dumps({"history": history, "test": test}))
rank.shutdown()
