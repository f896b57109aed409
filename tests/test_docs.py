"""The documentation is checked against the code it describes.

- `docs/cli.md` and `docs/api.md` equal what `tools/gen_cli_reference.py` generates now,
  and every option of every command appears in `docs/cli.md`;
- every `torchsmith` command in a ```bash block of the READMEs and the guide is accepted
  by the parser, and the settings of a `train` command validate;
- the commands of the quick starts and of the getting-started pages run in order, as a
  reader would type them, with a tiny budget; the files those pages show (a ```python
  block whose first line is `# name.py`) are written first;
- every script in `examples/` runs with a tiny budget;
- the links between the pages resolve, and the site builds with MkDocs when installed.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import io
import json
import math
import os
import re
import runpy
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import write_image_tree

from torchsmith.cli.flags import config_from_args
from torchsmith.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MAX_STEPS = 20  # the budget appended to every documented `train` command
EXAMPLE_STEPS = 5
PAGES = sorted([REPO / "README.md", REPO / "README.zh-CN.md", *(REPO / "docs").rglob("*.md")])
# pages whose commands run; for the READMEs only their quick start section
RUNNABLE = {
    "README.md": "Quick start",
    "README.zh-CN.md": "快速开始",
    "docs/getting-started.md": None,
    "docs/zh/getting-started.md": None,
}


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# ----------------------------------------------------------------------------- reading pages


@dataclass
class Block:
    language: str
    line: int  # 1-based line of the opening fence
    text: str


def fenced_blocks(markdown: str) -> list[Block]:
    blocks, current, start, language = [], None, 0, ""
    for number, line in enumerate(markdown.splitlines(), start=1):
        fence = re.match(r"^\s*```(\S*)", line)
        if current is None and fence:
            current, start, language = [], number, fence.group(1).lower()
        elif current is not None and fence:
            blocks.append(Block(language, start, "\n".join(current)))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def section(markdown: str, heading: str | None) -> str:
    """The text under the `## heading` (up to the next `## `), or all of it for None."""
    if heading is None:
        return markdown
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def shell_commands(script: str) -> list[list[str]]:
    """Each simple command of a bash block as argv (`&&`, `;` and `|` separate commands)."""
    commands: list[list[str]] = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in ("&&", "||", ";", "|", "&"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


def torchsmith_argv(argv: list[str]) -> list[str] | None:
    """`torchsmith ...` or `python -m torchsmith ...` as the arguments after the program."""
    if argv[:1] == ["torchsmith"]:
        return argv[1:]
    if len(argv) >= 3 and argv[0].startswith("python") and argv[1:3] == ["-m", "torchsmith"]:
        return argv[3:]
    return None


def file_blocks(markdown: str) -> dict[str, str]:
    """```python blocks that start with `# name.py`: files the page asks the reader to write."""
    files = {}
    for block in fenced_blocks(markdown):
        first = block.text.splitlines()[0] if block.text else ""
        name = re.fullmatch(r"#\s*([\w./-]+\.py)\s*", first)
        if block.language == "python" and name:
            files[name.group(1)] = block.text + "\n"
    return files


@dataclass
class Step:
    page: str
    line: int
    argv: list[str]  # `torchsmith ...`, or `python FILE.py ...` for a file the page shows

    @property
    def label(self) -> str:
        return f"{self.page}:{self.line}: {shlex.join(self.argv)}"


def documented_commands(page: Path, heading: str | None = None) -> list[Step]:
    text = section(page.read_text(encoding="utf-8"), heading)
    steps = []
    for block in fenced_blocks(text):
        if block.language in ("bash", "sh", "shell", "console"):
            steps += [Step(rel(page), block.line, argv) for argv in shell_commands(block.text)]
    return steps


def runnable_steps(page: str) -> list[Step]:
    path = REPO / page
    files = file_blocks(path.read_text(encoding="utf-8"))
    steps = []
    for step in documented_commands(path, RUNNABLE[page]):
        is_script = step.argv[0].startswith("python") and len(step.argv) > 1 and step.argv[1] in files
        if torchsmith_argv(step.argv) is not None or is_script:
            steps.append(step)
    return steps


# ----------------------------------------------------------------------------- generated references


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_cli_reference", REPO / "tools" / "gen_cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_page(name: str, expected: str) -> None:
    actual = (REPO / "docs" / name).read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            list(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), f"docs/{name}", "generated"))[
                :60
            ]
        )
        pytest.fail(f"docs/{name} is out of date; run `python tools/gen_cli_reference.py`:\n{diff}")


def test_cli_reference_is_generated_from_the_current_parser() -> None:
    assert_same_page("cli.md", load_tool().cli_reference())


def test_api_reference_is_generated_from_the_current_docstrings() -> None:
    assert_same_page("api.md", load_tool().api_reference())


def parsers(parser: Any, path: tuple[str, ...] = ("torchsmith",)) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (sub)command parser, walked independently of the generator."""
    yield path, parser
    for action in parser._actions:
        choices = action.choices if isinstance(action.choices, dict) else {}
        for name, sub in choices.items():
            yield from parsers(sub, (*path, name))


def missing_options(parser: Any, page: str) -> list[str]:
    """`"torchsmith train --flag"` for every option of every command not shown in its section of `page`."""
    missing = []
    for path, sub in parsers(parser):
        title = f"## `{' '.join(path)}`"
        if title not in page:
            missing.append(f"{' '.join(path)} (no section)")
            continue
        body = page.split(title + "\n", 1)[1].split("\n## ", 1)[0]
        for action in sub._actions:
            if isinstance(action.choices, dict):
                continue  # the sub-command dispatcher: each command has its own section
            missing += [
                f"{' '.join(path)} {name}" for name in action.option_strings or [action.dest] if f"`{name}`" not in body
            ]
    return missing


def test_every_option_of_every_command_is_in_the_cli_reference() -> None:
    parser = build_parser()
    assert len(list(parsers(parser))) >= 3, "expected the top level, train and list at least"
    missing = missing_options(parser, (REPO / "docs" / "cli.md").read_text(encoding="utf-8"))
    assert not missing, f"missing from docs/cli.md: {missing}; run `python tools/gen_cli_reference.py`"


def test_a_new_flag_or_command_is_caught_until_the_reference_is_regenerated() -> None:
    page = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = build_parser()
    train = dict(parsers(parser))[("torchsmith", "train")]
    train.add_argument("--not-documented-yet", help="a flag added after the page was generated")
    subcommands = next(a for a in parser._actions if isinstance(a.choices, dict))
    subcommands.add_parser("new-command").add_argument("--its-option")
    expected = ["torchsmith train --not-documented-yet", "torchsmith new-command (no section)"]
    assert missing_options(parser, page) == expected


# ----------------------------------------------------------------------------- documented commands


ALL_COMMANDS = [step for page in PAGES for step in documented_commands(page)]
TORCHSMITH_COMMANDS = [step for step in ALL_COMMANDS if torchsmith_argv(step.argv) is not None]


def test_pages_show_commands() -> None:
    """The extraction finds what the pages show (so the tests below cannot pass on nothing)."""
    assert len(TORCHSMITH_COMMANDS) >= 15
    for page in RUNNABLE:
        assert any(torchsmith_argv(s.argv) == ["train"] for s in runnable_steps(page)), page
    assert len(runnable_steps("docs/getting-started.md")) >= 6


@pytest.mark.parametrize("step", TORCHSMITH_COMMANDS, ids=lambda s: s.label)
def test_documented_command_is_accepted(step: Step) -> None:
    args = torchsmith_argv(step.argv)
    assert args is not None
    with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.redirect_stdout(io.StringIO()):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit as exit:
            assert exit.code in (0, None), f"{step.label}\nthe parser rejects it: {err.getvalue()}"
            return
    if parsed.command == "train" and not parsed.config and not parsed.resume:
        config_from_args(parsed)  # raises UsageError for an invalid value or --set key


# ----------------------------------------------------------------------------- running the pages


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass
class Outcome:
    status: str  # "ok" | "skip" | "fail"
    message: str = ""  # standard output when "ok"
    workdir: Path | None = None  # where it ran
    args: list[str] = field(default_factory=list)  # what it ran with, the budget included


# Outcomes of commands that depend on nothing a page made (no page file, no earlier run),
# shared between pages: `torchsmith train` in four quick starts runs once.
SHARED_OUTCOMES: dict[tuple[str, ...], Outcome] = {}


@dataclass
class PageRun:
    """Runs one page's commands in order in one folder, each once, as a reader would."""

    page: str
    workdir: Path
    steps: list[Step]
    outcomes: dict[int, Outcome] = field(default_factory=dict)

    def outcome(self, index: int) -> Outcome:
        for earlier in range(index + 1):
            if earlier not in self.outcomes:
                self.outcomes[earlier] = self._run(earlier)
        return self.outcomes[index]

    def _run(self, index: int) -> Outcome:
        step = self.steps[index]
        names = set(file_blocks((REPO / self.page).read_text(encoding="utf-8")))
        independent = not any(
            a in names or a.split(":")[0] in names or "runs/" in a or a in ("--config", "--resume") for a in step.argv
        )
        if independent and tuple(step.argv) in SHARED_OUTCOMES:
            return SHARED_OUTCOMES[tuple(step.argv)]
        outcome = self._execute(index)
        if independent:
            SHARED_OUTCOMES[tuple(step.argv)] = outcome
        return outcome

    def _execute(self, index: int) -> Outcome:
        step = self.steps[index]
        missing = [a for a in step.argv if "data/" in a and not (self.workdir / a.split(":")[-1]).exists()]
        if missing:
            return Outcome("skip", f"needs {missing[0]}: the real dataset in ../shared/data is not here")
        out, err = io.StringIO(), io.StringIO()
        args = torchsmith_argv(step.argv)
        args = budgeted(args, index) if args is not None else None
        with working_directory(self.workdir), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if args is None:
                    code = run_script(step.argv[1:])
                else:
                    code = main(args)
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except Exception as error:  # reported as this command's failure
                code, err = 1, io.StringIO(f"{type(error).__name__}: {error}")
        if code != 0:
            return Outcome("fail", f"{step.label}\nexit code {code}\n{err.getvalue()[-3000:]}")
        return Outcome("ok", out.getvalue(), self.workdir, args or [])


def budgeted(args: list[str], index: int) -> list[str]:
    if args[:1] != ["train"]:
        return args
    extra = ["--max-steps", str(MAX_STEPS), "--quiet"]
    return [*args, *extra] if "--run-dir" in args else [*args, *extra, "--run-dir", f"runs/step-{index}"]


def run_script(argv: list[str]) -> int:
    previous = sys.argv
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = previous
    return 0


@pytest.fixture(scope="module")
def page_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PageRun]:
    runs = {}
    for page in RUNNABLE:
        workdir = tmp_path_factory.mktemp(re.sub(r"\W", "_", page))
        for name, text in file_blocks((REPO / page).read_text(encoding="utf-8")).items():
            (workdir / name).parent.mkdir(parents=True, exist_ok=True)
            (workdir / name).write_text(text, encoding="utf-8")
        if SHARED_DATA.is_dir():
            (workdir / "data").symlink_to(SHARED_DATA, target_is_directory=True)
        runs[page] = PageRun(page, workdir, runnable_steps(page))
    return runs


def page_cases() -> list[Any]:
    cases = []
    for page in RUNNABLE:
        for index, step in enumerate(runnable_steps(page)):
            slow = torchsmith_argv(step.argv) is None  # a full Python script: no budget to give it
            cases.append(pytest.param(page, index, id=step.label, marks=[pytest.mark.slow] if slow else []))
    return cases


@pytest.mark.parametrize("page,index", page_cases())
def test_documented_command_runs(page: str, index: int, page_runs: dict[str, PageRun]) -> None:
    run = page_runs[page]
    outcome = run.outcome(index)
    if outcome.status == "skip":
        pytest.skip(outcome.message)
    assert outcome.status == "ok", outcome.message
    args = torchsmith_argv(run.steps[index].argv)
    if args is None:
        check_accuracy_lines(outcome.message, bar=0.8)
    elif args[:1] == ["train"]:
        assert outcome.workdir is not None
        check_train_run(outcome.workdir, outcome.args, outcome.message)
    else:
        assert outcome.message.strip(), f"{run.steps[index].label} printed nothing"


def last_value(args: list[str], flag: str) -> str:
    """The value of the last `flag` (argparse lets the last one win)."""
    return args[len(args) - args[::-1].index(flag)]


def check_train_run(workdir: Path, args: list[str], stdout: str) -> None:
    run_dir = workdir / last_value(args, "--run-dir")
    summary = json.loads((run_dir / "summary.json").read_text())
    info = json.loads((run_dir / "preprocessing.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == MAX_STEPS, summary
    accuracy = summary["test"]["accuracy"]
    # better than chance after a few steps: the data, the labels and the model agree
    assert 1.5 / info["num_classes"] < accuracy <= 1.0, summary
    assert stdout.strip().splitlines()[-1].startswith(f"test accuracy {accuracy:.4f}")


def check_accuracy_lines(stdout: str, bar: float) -> None:
    values = [float(v) for v in re.findall(r"accuracy (\d\.\d+)", stdout)]
    assert values, f"no accuracy printed:\n{stdout}"
    assert all(bar < v <= 1.0 for v in values), values


# ----------------------------------------------------------------------------- examples


EXAMPLES = sorted((REPO / "examples").glob("*.py"))
# examples that take no budget flag: they run only in the slow suite
UNBUDGETED = {"python_api.py": "takes no flags: trains the 10 epochs of the snippet it shows"}


def example_args(path: Path, tmp_path: Path) -> list[str]:
    """A tiny budget from the flags the script declares; data it needs, made in tmp_path."""
    source = path.read_text(encoding="utf-8")
    args = []
    if '"--epochs"' in source:
        args += ["--epochs", "1"]
    if '"--max-steps"' in source:
        args += ["--max-steps", str(EXAMPLE_STEPS)]
    if re.search(r'"--data-dir",[^)]*required=True', source):
        root = tmp_path / "images"  # a tiny image-folder tree with train/ and test/, 32x32 RGB
        write_image_tree(root / "train", classes=3, per_class=16, size=32)
        write_image_tree(root / "test", classes=3, per_class=6, size=32)
        args += ["--data-dir", str(root)]
    return args


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in UNBUDGETED else []) for p in EXAMPLES],
)
def test_example_runs(path: Path, tmp_path: Path) -> None:
    env = dict(os.environ, TORCHSMITH_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(path), *example_args(path, tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    numbers = [float(v) for v in re.findall(r"accuracy['\"]?:? (\d+\.\d+)", result.stdout)]
    assert numbers and all(0.0 <= v <= 1.0 and math.isfinite(v) for v in numbers), result.stdout


# ----------------------------------------------------------------------------- links and site


def heading_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_links_resolve(page: Path) -> None:
    broken = []
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        checks_anchor = bool(anchor) and file.suffix == ".md"
        if not file.exists() or (checks_anchor and anchor not in heading_anchors(file.read_text(encoding="utf-8"))):
            broken.append(target)
    assert not broken, f"{rel(page)}: broken links {broken}"


def test_readme_links_the_chinese_readme_and_the_guide() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "](README.zh-CN.md)" in readme and "](docs/index.md)" in readme
    assert "](README.md)" in (REPO / "README.zh-CN.md").read_text(encoding="utf-8")


def test_site_builds_with_mkdocs(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install mkdocs)")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("cli", "api", "zh/getting-started"):
        assert (tmp_path / page / "index.html").is_file(), page
