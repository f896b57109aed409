"""The loop's features: gradient accumulation, fp16 with a GradScaler, evaluation every N steps,
a plateau LR schedule, top-k checkpoints, and models that return dicts, tuples or their own loss."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch import nn

from torchsmith import Trainer
from torchsmith.callbacks.checkpointer import Checkpointer
from torchsmith.callbacks.metrics_logger import MetricsLogger
from torchsmith.doctor.preflight import preflight
from torchsmith.errors import TrainingFailure, UsageError
from torchsmith.train.outputs import OutputSelector


def one_step(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, accumulate: int, **options) -> dict:
    trainer = Trainer(model, optimizer="sgd", max_steps=1, batch_size=len(targets), accumulate=accumulate,
                      progress="none", **options)  # fmt: skip
    trainer.optim_config.scheduler = "none"
    trainer.fit((inputs, targets))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulated_micro_batches_give_the_step_of_the_whole_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(30, 8, generator=generator), torch.randint(0, 4, (30,), generator=generator)
    results = []
    for accumulate in (1, 4):  # 30 samples in micro-batches of 8, 8, 7, 7: uneven shares
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        results.append(one_step(model, inputs, targets, accumulate))
    assert max(float((results[0][k] - v).abs().max()) for k, v in initial.items()) > 1e-4  # the step moved them
    for key, value in results[0].items():
        assert torch.allclose(results[1][key], value, atol=1e-6, rtol=0), key


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(11, 8), nn.Linear(8, 11)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens))  # (B, T, V)


def test_accumulation_weights_micro_batches_by_their_unpadded_target_tokens() -> None:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 11, (12, 9), generator=generator)
    targets = torch.randint(0, 11, (12, 9), generator=generator)
    targets[:6, 3:] = -100  # the first half is mostly padding: its micro-batches hold fewer tokens
    results = []
    for accumulate in (1, 3):
        torch.manual_seed(0)
        results.append(one_step(TinyLM(), tokens, targets, accumulate, task="sequence"))
    for key, value in results[0].items():
        assert torch.allclose(results[1][key], value, atol=1e-6, rtol=0), key


def test_fp16_trains_with_a_grad_scaler_whose_overflow_skips_are_no_nan_events() -> None:
    generator = torch.Generator().manual_seed(2)
    inputs, targets = torch.randn(64, 8, generator=generator), torch.randint(0, 4, (64,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    trainer = Trainer(model, optimizer="sgd", max_steps=20, batch_size=16, precision="fp16", progress="none")
    trainer.train_batches = trainer.batches((inputs, targets), train=True)
    trainer.setup()
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    # a scale so large that the fp16 gradients overflow: the scaler skips and halves, the guard stays quiet
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=1000)
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit((inputs, targets))
    assert trainer.state.nan_events == [] and trainer.state.step == 20
    assert trainer.scaler.get_scale() < 2.0**24  # it skipped overflowing steps
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # and then trained
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fp16_guard_still_stops_on_a_real_nan() -> None:
    inputs, targets = torch.randn(32, 8), torch.randint(0, 4, (32,))
    inputs[5, 2] = float("nan")
    trainer = Trainer(nn.Linear(8, 4), optimizer="sgd", max_steps=2, batch_size=32, precision="fp16", progress="none")
    with pytest.raises(TrainingFailure):
        trainer.fit((inputs, targets))
    assert trainer.state.nan_events and trainer.state.step == 0


def test_eval_every_writes_mid_epoch_rows_plateau_lowers_the_lr_and_keep_best_keeps_k(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    inputs, targets = torch.randn(160, 8, generator=generator), torch.randint(0, 4, (160,), generator=generator)
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    checkpointer = Checkpointer(tmp_path, {}, monitor="val_accuracy", keep_best=2)
    logger = MetricsLogger(tmp_path, tensorboard=False)
    options = {"eval_every": 4, "log_every": 5, "monitor": "val_accuracy", "progress": "none"}
    trainer = Trainer(model, optimizer="sgd", max_epochs=2, batch_size=16, callbacks=[logger, checkpointer], **options)
    trainer.optim_config.scheduler, trainer.optim_config.lr = "plateau", 1e-6  # nothing improves
    trainer.optim_config.plateau_patience, trainer.optim_config.plateau_factor = 0, 0.5
    trainer.fit((inputs, targets), (inputs[:40], targets[:40]))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    evaluated = [int(r["step"]) for r in rows if r.get("val_loss")]
    assert evaluated == [4, 8, 10, 12, 16, 20]  # every 4 steps and at the two epoch ends (10 steps each)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-6 * 0.5**5
    )  # halved at each evaluation but the first
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("best"))
    assert kept[0] == "best" and len(kept) == 3  # best and the two best-step-N


def test_unknown_plateau_monitor_is_refused_before_training() -> None:
    with pytest.raises(UsageError, match=r"train\.monitor 'val_bleu'"):
        Trainer(nn.Linear(8, 4), monitor="val_bleu", progress="none")


class DictModel(nn.Module):
    def __init__(self, own_loss: bool = False) -> None:
        super().__init__()
        self.linear, self.own_loss = nn.Linear(8, 4), own_loss

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.linear(x)
        out = {"hidden": x, "logits": logits}
        if self.own_loss:
            out["loss"] = logits.square().mean()  # a loss of its own: used as it is
        return out


def test_models_returning_dicts_tuples_or_their_own_loss_train(capsys: pytest.CaptureFixture[str]) -> None:
    inputs, targets = torch.randn(64, 8), torch.randint(0, 4, (64,))
    trainer = Trainer(DictModel(), optimizer="sgd", max_epochs=1, batch_size=16, progress="none")
    trainer.fit((inputs, targets))
    assert "using 'logits' as its prediction" in capsys.readouterr().err
    assert trainer.predict(inputs).shape == (64, 4)
    assert 0 <= trainer.evaluate((inputs, targets))["accuracy"] <= 1
    own = Trainer(DictModel(own_loss=True), optimizer="sgd", max_epochs=1, batch_size=64, progress="none")
    loss = own.evaluate((inputs, targets))["loss"]
    with torch.no_grad():
        assert loss == pytest.approx(float(own.model(inputs)["loss"]), rel=1e-6)
    pair = nn.Sequential(nn.Linear(8, 4))
    select = OutputSelector("1", announce=False)
    assert torch.equal(select((torch.zeros(2), torch.ones(2)))[0], torch.ones(2))
    assert pair is not None


def test_preflight_names_the_keys_of_a_dict_without_the_chosen_output() -> None:
    model = DictModel()
    select = OutputSelector("scores", announce=False)
    findings = preflight(model, torch.randn(4, 8), torch.randint(0, 4, (4,)), num_classes=4,
                         loss_fn=nn.CrossEntropyLoss(), select=lambda raw: select(raw)[0])  # fmt: skip
    assert [f.code for f in findings] == ["output-kind"]
    assert "keys ['hidden', 'logits']" in findings[0].message and "model.output" in findings[0].message
