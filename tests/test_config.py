from __future__ import annotations

import pytest

from torchsmith.config import RunConfig, load_yaml, parse_set
from torchsmith.errors import UsageError


def test_from_dict_types_and_defaults() -> None:
    config = RunConfig.from_dict({"train": {"max_epochs": 7, "batch_size": 32}, "optim": {"lr": 1}})
    assert config.train.max_epochs == 7 and config.train.batch_size == 32
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.model.name == "simplenet"


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(UsageError, match=r"unknown key 'optim.lrr'\. Did you mean 'lr'\?"):
        RunConfig.from_dict({"optim": {"lrr": 0.1}})


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(UsageError) as info:
        RunConfig.from_dict(
            {
                "train": {"batch_size": 0, "max_epochs": "ten", "precision": "fp8"},
                "optim": {"lr": -1.0, "beta2": 1.5},
                "modle": {},
            }
        )
    message = str(info.value)
    assert "--batch-size (train.batch_size) must be a positive integer, got 0" in message
    assert "'train.max_epochs' must be int, got 'ten'" in message
    assert "train.precision must be one of fp32, bf16, fp16, got 'fp8'" in message
    assert "--lr (optim.lr) must be positive, got -1.0" in message
    assert "optim.beta2 must be in [0, 1), got 1.5" in message
    assert "unknown key 'modle'. Did you mean 'model'?" in message


def test_parse_set_nests_and_parses_scalars() -> None:
    assert parse_set(["optim.lr=0.05", "model.args.width=64", "train.compile=true", "data.dir=a b"]) == {
        "optim": {"lr": 0.05},
        "model": {"args": {"width": 64}},
        "train": {"compile": True},
        "data": {"dir": "a b"},
    }
    with pytest.raises(UsageError, match="--set expects key=value"):
        parse_set(["optim.lr"])


def test_yaml_with_python_tag_is_refused(tmp_path) -> None:
    marker = tmp_path / "created"
    path = tmp_path / "evil.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UsageError, match="not a valid torchsmith config"):
        load_yaml(path)
    assert not marker.exists()


def test_yaml_missing_file(tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
