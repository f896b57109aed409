"""The Python API exactly as the design shows it: tensors in, history and metrics out.

python examples/python_api.py
"""

from __future__ import annotations

import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.config import DataConfig
from torchsmith.data.registry import load_data

# (inputs, targets) tensors: the embedded MNIST sample, normalised floats.
bundle = load_data(DataConfig(name="mnist-sample"), seed=0)
train_data = bundle.train.get_batch(torch.arange(len(bundle.train)), None, train=False)
val_data = bundle.val.get_batch(torch.arange(len(bundle.val)), None, train=False)
test_data = bundle.test.get_batch(torch.arange(len(bundle.test)), None, train=False)
new_inputs = test_data[0][:5]

model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))

trainer = Trainer(
    model,
    loss=nn.CrossEntropyLoss(),
    optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
    max_epochs=10,
    batch_size=64,
)  # batch_size serves Datasets and tensors
history = trainer.fit(train_data, val_data)  # DataLoader, Dataset, or (inputs, targets) tensors
print(trainer.evaluate(test_data))  # {"loss": ..., "accuracy": ...}
print(trainer.predict(new_inputs).argmax(dim=1))  # model outputs -> predicted classes
