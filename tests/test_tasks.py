"""Tasks and metrics: regression and multi-label, metrics as exact sums (the same for any batch
size), equal to scikit-learn's on the same predictions, chosen with train.metrics and monitored."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.errors import UsageError
from torchsmith.train.metrics import MetricAccumulator, TrainMetrics
from torchsmith.train.task_base import SCORE_BINS
from torchsmith.train.tasks import resolve_task

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def quantized(generator: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    """Probabilities at bin centres: the histograms then hold the exact scores."""
    return (torch.randint(0, SCORE_BINS, shape, generator=generator).double() + 0.5) / SCORE_BINS


def evaluate(task: str, outputs: torch.Tensor, targets: torch.Tensor, metrics: str, batch: int) -> dict[str, float]:
    meter = MetricAccumulator(resolve_task(task))
    meter.task.select(metrics.split(","))
    loss = nn.functional.mse_loss if task == "regression" else nn.functional.binary_cross_entropy_with_logits
    for start in range(0, len(targets), batch):
        o, t = outputs[start : start + batch], targets[start : start + batch]
        value = (
            nn.functional.cross_entropy(o, t) if task == "classification" else loss(o.reshape(t.shape), t.to(o.dtype))
        )
        meter.update(value, o, t)
    return meter.compute()


def test_classification_f1_and_auroc_equal_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(0)
    for classes in (2, 5):
        probabilities = quantized(generator, (300, classes))
        probabilities /= probabilities.sum(dim=1, keepdim=True)
        targets = torch.randint(0, classes, (300,), generator=generator)
        logits = probabilities.log()  # softmax(log p) = p: the histogram sees these scores
        found = evaluate("classification", logits, targets, "accuracy,f1_macro,precision_macro,recall_macro,auroc", 64)
        predicted = probabilities.argmax(dim=1).numpy()
        assert found["f1_macro"] == pytest.approx(
            sklearn_metrics.f1_score(targets, predicted, average="macro"), abs=1e-12
        )
        assert found["recall_macro"] == pytest.approx(
            sklearn_metrics.recall_score(targets, predicted, average="macro"), abs=1e-12
        )
        # AUROC from histograms is exact for scores quantized to the bins: scikit-learn on those
        bins = (logits.softmax(dim=1) * SCORE_BINS).floor()
        if classes == 2:
            expected = sklearn_metrics.roc_auc_score(targets, bins[:, 1])
        else:  # macro one-vs-rest, as roc_auc_score(multi_class="ovr") averages it
            expected = sum(sklearn_metrics.roc_auc_score(targets == c, bins[:, c]) for c in range(classes)) / classes
            unbinned = sklearn_metrics.roc_auc_score(targets, probabilities, multi_class="ovr")
            assert found["auroc"] == pytest.approx(unbinned, abs=2e-3)
        assert found["auroc"] == pytest.approx(expected, abs=1e-12)


def test_multilabel_f1_map_and_auroc_equal_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(1)
    probabilities = quantized(generator, (400, 6))
    targets = (torch.rand(400, 6, generator=generator) < probabilities * 0.8 + 0.1).float()
    logits = torch.logit(probabilities)
    metrics = "f1_macro,f1_micro,f1_per_label,map,auroc,exact_match"
    found = evaluate("multilabel", logits, targets, metrics, 64)
    predicted = (probabilities > 0.5).numpy()
    assert found["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(targets, predicted, average="macro"), abs=1e-12)
    assert found["f1_micro"] == pytest.approx(sklearn_metrics.f1_score(targets, predicted, average="micro"), abs=1e-12)
    per_label = sklearn_metrics.f1_score(targets, predicted, average=None)
    assert [found[f"f1_{i}"] for i in range(6)] == pytest.approx(list(per_label), abs=1e-12)
    assert found["map"] == pytest.approx(sklearn_metrics.average_precision_score(targets, probabilities), abs=1e-12)
    assert found["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(targets, probabilities), abs=1e-12)
    assert found["exact_match"] == pytest.approx(sklearn_metrics.accuracy_score(targets, predicted), abs=1e-12)


def test_auroc_of_unbinned_scores_is_within_the_bin_width() -> None:
    generator = torch.Generator().manual_seed(2)
    targets = torch.randint(0, 2, (2000,), generator=generator)
    scores = (torch.rand(2000, generator=generator) + 0.3 * targets).clamp(0, 1)
    logits = torch.stack([torch.zeros(2000), torch.logit(scores.clamp(1e-6, 1 - 1e-6))], dim=1)
    found = evaluate("classification", logits, targets, "auroc", 100)
    assert found["auroc"] == pytest.approx(sklearn_metrics.roc_auc_score(targets, scores), abs=2e-3)


def test_regression_metrics_per_output_and_mean_equal_scikit_learn() -> None:
    generator = torch.Generator().manual_seed(3)
    targets = torch.randn(250, 3, generator=generator) * torch.tensor([1.0, 10.0, 100.0])
    outputs = targets + torch.randn(250, 3, generator=generator) * torch.tensor([0.5, 3.0, 60.0])
    found = evaluate("regression", outputs, targets, "mae,rmse,r2", 32)
    targets, outputs = targets.double(), outputs.double()  # scikit-learn would sum in float32
    for i, name in enumerate(("0", "1", "2")):
        assert found[f"r2_{name}"] == pytest.approx(sklearn_metrics.r2_score(targets[:, i], outputs[:, i]), rel=1e-9)
        assert found[f"mae_{name}"] == pytest.approx(
            sklearn_metrics.mean_absolute_error(targets[:, i], outputs[:, i]), rel=1e-6
        )
    assert found["r2"] == pytest.approx(sklearn_metrics.r2_score(targets, outputs), rel=1e-9)
    expected_rmse = sklearn_metrics.root_mean_squared_error(targets, outputs)  # the mean of per-output RMSEs
    assert found["rmse"] == pytest.approx(expected_rmse, rel=1e-6)


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_metrics_are_the_same_for_batch_sizes_1_7_and_64(task: str) -> None:
    generator = torch.Generator().manual_seed(4)
    outputs = torch.randn(150, 4, generator=generator)
    targets = {
        "classification": torch.randint(0, 4, (150,), generator=generator),
        "multilabel": (torch.rand(150, 4, generator=generator) > 0.5).float(),
        "regression": outputs + torch.randn(150, 4, generator=generator),
    }[task]
    metrics = {
        "classification": "accuracy,top5,f1_macro,precision_macro,recall_macro,auroc",
        "multilabel": "f1_macro,f1_micro,f1_per_label,map,auroc,exact_match",
        "regression": "mae,rmse,mse,r2",
    }[task]
    found = [evaluate(task, outputs, targets, metrics, batch) for batch in (1, 7, 64)]
    assert len(found[0]) > 3
    for other in found[1:]:
        assert other.keys() == found[0].keys()
        for name, value in found[0].items():
            assert other[name] == pytest.approx(value, rel=1e-9 if name != "loss" else 1e-6), name


def test_train_epoch_metrics_come_from_the_summed_statistics() -> None:
    """train_* over an epoch is the metric of the epoch's sums, not a mean of interval values."""
    task = resolve_task("classification")
    task.select(["f1_macro"])
    metrics = TrainMetrics(task)
    whole = MetricAccumulator(task)
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):  # three log intervals
        outputs, targets = torch.randn(20, 3, generator=generator), torch.randint(0, 3, (20,), generator=generator)
        metrics.update(torch.tensor(1.0), outputs, targets)
        whole.update(torch.tensor(1.0), outputs, targets)
        metrics.read()
    assert metrics.epoch_means()["train_f1_macro"] == pytest.approx(whole.compute()["f1_macro"], abs=1e-12)


def test_regression_trains_and_reports_r2() -> None:
    generator = torch.Generator().manual_seed(6)
    inputs = torch.randn(512, 6, generator=generator)
    targets = inputs @ torch.randn(6, generator=generator) + 0.05 * torch.randn(512, generator=generator)
    torch.manual_seed(0)
    model = nn.Linear(6, 1)
    trainer = Trainer(model, task="regression", max_epochs=15, batch_size=32, progress="none", optimizer="adamw",
                      monitor="val_r2")  # fmt: skip
    trainer.optim_config.lr = 0.05
    trainer.fit((inputs, targets), (inputs[:128], targets[:128]))
    assert isinstance(trainer.loss_fn, nn.MSELoss)  # the task's default loss
    assert trainer.state.metrics["val_r2"] > 0.95
    assert {"val_mae", "val_rmse", "train_r2"} <= set(trainer.state.metrics)


def test_metric_and_monitor_names_are_checked_before_training() -> None:
    model = nn.Linear(4, 3)
    with pytest.raises(UsageError, match=r"no metric 'f1_macr'\. Did you mean 'f1_macro'"):
        Trainer(model, metrics="accuracy,f1_macr", progress="none")
    with pytest.raises(UsageError, match=r"train\.monitor 'val_r2' is no metric of the classification task"):
        Trainer(model, monitor="val_r2", progress="none")
    with pytest.raises(UsageError, match="train_<metric> or val_<metric>"):
        Trainer(model, monitor="r2", progress="none")
    trainer = Trainer(model, monitor="val_f1_macro", progress="none")
    assert trainer.task.selected == ("accuracy", "f1_macro")  # a monitored metric is computed
    regression = Trainer(nn.Linear(4, 1), task="regression", monitor="val_r2", progress="none")
    assert regression.task.selected == ("mae", "rmse", "r2")
