"""Every bad input a user can give exits 2 with a message that names the fix, and no traceback.

Each case runs `python -m torchsmith ...` as a real process (the processes run a few at a
time, once for the module; each test checks one of them).
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import write_image_tree
from helpers import run_process

BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
    + "train: *i\n"
)
MAPPING_BOMB = (  # a mapping that passes as data.options until something walks it
    "a: &a {k0: x, k1: x, k2: x, k3: x, k4: x, k5: x, k6: x, k7: x, k8: x}\n"
    + "".join(
        f"{n}: &{n} {{{', '.join(f'k{i}: *{p}' for i in range(9))}}}\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "data:\n  options: *i\n"
)

# name -> (arguments, what the message must say); {tmp} is the module's folder of input files
CASES: dict[str, tuple[list[str], str]] = {
    "set-section-then-key": (["train", "--set", "optim=1", "--set", "optim.lr=2"], "Drop --set optim=..."),
    "config-not-utf8": (["train", "--config", "{tmp}/latin1.yaml"], "save it as UTF-8"),
    "model-no-file": (["train", "--model", ":Net"], "path/to/file.py:ClassName"),
    "model-relative-module": (["train", "--model", ".m:Net"], "an absolute module name"),
    "tsv-field-too-long": (["train", "--data", "tsv:{tmp}/long.tsv", "--model", "bow"], "shorten that text"),
    "option-not-int": (
        ["train", "--data", "tsv:{tmp}/good.tsv", "--model", "bow", "--set", "data.options.max_len=abc"],
        "--set data.options.max_len=64",
    ),
    "ema-every-zero": (
        ["train", "--set", "train.ema_decay=0.9", "--set", "train.ema_every=0"],
        "train.ema_every must be a positive integer",
    ),
    "keep-last-zero": (["train", "--keep-last", "0"], "--keep-last (train.keep_last) must be a positive integer"),
    "monitor-no-metric": (["train", "--set", "train.monitor=val_acc"], "Did you mean 'val_accuracy'?"),
    "key-misspelt-top-level": (["train", "--config", "{tmp}/epohcs.yaml"], "Did you mean 'train.max_epochs'?"),
    "key-wrong-level": (["train", "--config", "{tmp}/wrong-level.yaml"], "Did you mean 'optim.lr'?"),
    "yaml-alias-bomb": (["train", "--config", "{tmp}/bomb.yaml"], "write the values out without aliases"),
    "yaml-alias-bomb-in-options": (["train", "--config", "{tmp}/bomb-options.yaml"], "more than the 100,000"),
    # earlier issues
    "batch-size-zero": (["train", "--batch-size", "0"], "must be a positive integer, got 0"),
    "unknown-model": (["train", "--model", "convnett"], "Did you mean 'convnet'?"),
    "unknown-set-key": (["train", "--set", "optim.lrr=0.1"], "Did you mean 'lr'?"),
    "model-args-not-json": (["train", "--model-args", "{bad"], "--model-args must be a JSON object"),
    "on-nan-choice": (["train", "--on-nan", "explode"], "train.on_nan must be one of"),
    "model-file-missing": (["train", "--model", "{tmp}/missing.py:Net"], "does not exist"),
    "config-missing": (["train", "--config", "{tmp}/missing.yaml"], "does not exist"),
    "resume-no-checkpoints": (["train", "--resume", "--run-dir", "{tmp}"], "has no checkpoints/ folder"),
    "resume-no-run": (["train", "--resume"], "--resume needs the run to continue"),
    "resume-and-overwrite": (["train", "--resume", "--overwrite", "--run-dir", "{tmp}/ckpt-run"], "choose one"),
    "run-dir-not-empty": (["train", "--run-dir", "{tmp}"], "is not empty"),
    "evaluate-no-run": (["evaluate", "{tmp}/nowhere"], "does not exist"),
    "user-code-from-config": (["train", "--config", "{tmp}/user-model.yaml"], "--trust-model-code"),
    "label-id-column": (["train", "--data", "tsv:{tmp}/ids.tsv", "--model", "bow"], "it looks like an id column"),
    "image-too-many-pixels": (
        ["train", "--data", "imagefolder:{tmp}/photos", "--set", "data.options.max_pixels=100"],
        "raise --set data.options.max_pixels=N",
    ),
    "max-pixels-not-int": (
        ["train", "--data", "imagefolder:{tmp}/photos", "--set", "data.options.max_pixels=lots"],
        "data.options.max_pixels must be a positive integer",
    ),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str]]:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "latin1.yaml").write_bytes("train:\n  max_epochs: 1  # café\n".encode("latin-1"))
    (tmp / "long.tsv").write_text("sentence\tlabel\n" + "a" * 200_000 + "\t1\n")
    (tmp / "good.tsv").write_text("sentence\tlabel\n" + "".join(f"word {i}\t{i % 2}\n" for i in range(20)))
    (tmp / "epohcs.yaml").write_text("epohcs: 2\n")
    (tmp / "wrong-level.yaml").write_text("train:\n  lr: 0.1\n")
    (tmp / "bomb.yaml").write_text(BOMB)
    (tmp / "bomb-options.yaml").write_text(MAPPING_BOMB)
    (tmp / "user-model.yaml").write_text("model:\n  name: nets.py:Net\n")
    (tmp / "ckpt-run" / "checkpoints").mkdir(parents=True)
    (tmp / "ids.tsv").write_text("sentence\tlabel\n" + "".join(f"word {i}\t{1_000_000 + i}\n" for i in range(20)))
    write_image_tree(tmp / "photos", classes=2, per_class=2)  # 16x16: 256 pixels each
    work = tmp_path_factory.mktemp("cwd")  # nothing a case writes lands in the repository

    def run(args: list[str]) -> tuple[int, str]:
        try:
            result = run_process([a.replace("{tmp}", str(tmp)) for a in args], cwd=work, timeout=300)
        except subprocess.TimeoutExpired:  # a hang (the alias bomb did) fails its own case only
            return -1, "timed out after 300 s"
        return result.returncode, result.stderr

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(run, args) for name, (args, _) in CASES.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_the_fix_and_no_traceback(name: str, results: dict[str, tuple[int, str]]) -> None:
    code, err = results[name]
    assert "Traceback" not in err and "internal error" not in err, err
    assert code == 2, err
    assert err.startswith("error: ") or "\nerror: " in err, err
    assert CASES[name][1] in err, err
    assert len(err) < 3000, err[:500]  # long values are cut
