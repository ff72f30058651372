"""Every shell command in README.md's ```bash blocks is runnable as written (and in those of the
study pages it links to, docs/results/*.md, checked after the README's).

The README is read as a user reads it: blocks in order, ``NAME=value`` lines expanding later
``$NAME`` words, ``\\``-continued lines joined, comments dropped, ``{a,b}`` brace lists
expanded. Each command is then checked without training anything:

* the program exists: a ``setup.cfg`` console script installed next to this interpreter
  (and its entry point importable), ``python -m`` modules, ``make`` targets, ``pip`` extras,
  the Makefile's virtualenv for ``source .../bin/activate``;
* ``sdpo`` and ``sdpo-baseline fit|test`` commands parse their configs and flags with
  ``--print_config`` (the 7B configs included); every config file they name exists;
* every file a command reads (adapters, data files, item tables, summaries, sdpo-report
  globs) exists in the repository, is under ``../shared``, or is written by an earlier
  README command at the path its printed config gives (``default_root_dir/export``,
  ``default_root_dir/summary.json``, ``sdpo-prepare --out``);
* commands that need nothing absent and take seconds (``--help``, ``sdpo-report`` on the
  committed results) are run.

A command reading ``../shared`` files that are absent is skipped with the reason printed.
No command is trained: the README states each one's measured time.
"""

from __future__ import annotations

import configparser
import glob
import importlib
import importlib.util
import itertools
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

README = REPO / "README.md"
#: the study pages the README links to: their commands are checked too, after the README's
STUDY_PAGES = tuple(
    REPO / "docs" / "results" / f"{name}.md" for name in ("lastfm", "movielens", "baselines")
)
SHARED_PREFIX = "../shared/"
#: git-ignored output folders: what the README reads there must come from its own commands,
#: not from whatever a developer's checkout holds
OUTPUT_DIRS = ("runs/", "data/")

#: the data files each ``sdpo`` subcommand reads
READS = {
    "fit": ("train_file", "val_file"),
    "validate": ("val_file",),
    "test": ("test_file",),
    "predict": ("predict_file",),
}

#: what ``make demo`` writes (sdpo_lightning/demo.py: ``run("runs/quickstart")``)
DEMO_OUTPUTS = tuple(
    f"runs/quickstart/{stage}/{name}"
    for stage in ("sft", "sdpo")
    for name in ("summary.json", "predictions.jsonl", "export")
)


@dataclass(frozen=True)
class Command:
    """One shell command of the README: its words after expansion, and where it stands."""

    line: int
    text: str
    words: tuple[str, ...]
    source: str = "README.md"

    @property
    def id(self) -> str:
        """A short test id: ``L<line>:<first words>`` (``<page>:L<line>:...`` off the README)."""
        page = "" if self.source == "README.md" else f"{Path(self.source).name}:"
        return f"{page}L{self.line}:{' '.join(self.words[:4])}"[:80]


def _brace_expand(word: str) -> list[str]:
    """Bash brace expansion of ``{a,b}`` lists (nested lists are not used by the README)."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if match is None:
        return [word]
    head, tail = word[: match.start()], word[match.end() :]
    return [
        expanded
        for part in match.group(1).split(",")
        for expanded in _brace_expand(head + part + tail)
    ]


def _expand_vars(text: str, env: dict[str, str]) -> str:
    """Replace ``$NAME`` / ``${NAME}`` with the README's earlier assignments."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in env, f"${name} is used before the README assigns it: {text!r}"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def _logical_lines(block: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Join ``\\``-continued lines; yields (first line number, joined text)."""
    start, parts = 0, []
    for number, raw in block:
        if not parts:
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1])
            continue
        parts.append(raw)
        yield start, " ".join(p.strip() for p in parts)
        parts = []
    if parts:
        yield start, " ".join(p.strip() for p in parts)


def readme_commands(path: Path = README) -> list[Command]:
    """The commands of every ```bash block of ``path``, variables expanded, in order."""
    blocks: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if current is None and line.strip() == "```bash":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current.append((number, line))
    env: dict[str, str] = {}
    commands = []
    for block in blocks:
        for number, text in _logical_lines(block):
            words = shlex.split(_expand_vars(text, env), comments=True)
            if not words:
                continue
            assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", words[0])
            if assignment and len(words) == 1:
                env[assignment.group(1)] = assignment.group(2)
                continue
            expanded = tuple(itertools.chain.from_iterable(_brace_expand(w) for w in words))
            commands.append(Command(number, text, expanded, str(path.relative_to(REPO))))
    return commands


COMMANDS = readme_commands() + [c for page in STUDY_PAGES for c in readme_commands(page)]


def console_scripts() -> dict[str, str]:
    """``setup.cfg``'s console scripts: name -> ``module:function``."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    scripts = {}
    for entry in cfg["options.entry_points"]["console_scripts"].strip().splitlines():
        name, target = entry.split("=", 1)
        scripts[name.strip()] = target.strip()
    return scripts


def _entry_point(name: str) -> Any:
    """The function behind console script ``name`` (asserting it is declared)."""
    scripts = console_scripts()
    assert name in scripts, f"{name} is not a console script of setup.cfg"
    module, func = scripts[name].split(":")
    return getattr(importlib.import_module(module), func)


def _installed(name: str) -> None:
    """The console script is installed beside the running interpreter (as ``make`` does)."""
    assert (Path(sys.executable).parent / name).exists(), (
        f"{name} is not installed in {Path(sys.executable).parent}: pip install -e ."
    )


def _run_exit(func: Any, args: list[str]) -> int:
    """Call a CLI entry point; its exit status (``SystemExit`` or the return value)."""
    try:
        status = func(args)
    except SystemExit as exc:
        status = exc.code
    return 0 if status is None else int(status)


def _flag_value(words: tuple[str, ...], flag: str) -> str | None:
    """The value of ``flag VALUE`` or ``flag=VALUE`` among ``words`` (last one wins)."""
    value = None
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
    return value


def _dig(config: dict[str, Any], dotted: str) -> Any:
    """``config['a']['b']`` for ``'a.b'``; ``None`` where a level is missing."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


@dataclass
class Layout:
    """Files that earlier README commands write, and notes printed with the next result."""

    written: set[str] = field(default_factory=lambda: set(DEMO_OUTPUTS))
    notes: list[str] = field(default_factory=list)

    def check_input(self, path: str, what: str) -> str | None:
        """Assert ``path`` can be read when the command runs; a skip reason, or ``None``."""
        if path.startswith(SHARED_PREFIX):
            return None if (REPO / path).exists() else f"{what} {path} is absent"
        if not path.startswith(OUTPUT_DIRS) and (REPO / path).exists():
            return None
        assert any(path == w or path.startswith(w + "/") for w in self.written), (
            f"{what} {path} is neither in the repository nor written by an earlier README "
            f"command (written: {sorted(self.written)})"
        )
        return None


def _print_config(main: Any, words: list[str], capsys: pytest.CaptureFixture) -> dict:
    """Run a LightningCLI entry point with ``--print_config``; the printed config."""
    capsys.readouterr()
    status = _run_exit(main, [*words, "--print_config"])
    out = capsys.readouterr().out
    assert status == 0, f"--print_config failed ({status}): {words}"
    config = yaml.safe_load(out)
    assert isinstance(config, dict), out[-2000:]
    return config


def _check_configs(words: tuple[str, ...]) -> None:
    """Every ``-c`` / ``--config`` file exists."""
    for i, word in enumerate(words):
        if word in ("-c", "--config"):
            assert (REPO / words[i + 1]).is_file(), f"config {words[i + 1]} does not exist"


def check_sdpo(cmd: Command, layout: Layout, capsys: pytest.CaptureFixture) -> list[str]:
    """``sdpo SUBCOMMAND ...``: parse with ``--print_config``; record what it writes."""
    from sdpo_lightning.cli import cli_main

    words = cmd.words[1:]
    if words in (("--help",), ("-h",)):
        assert _run_exit(cli_main, ["--help"]) == 0
        out = capsys.readouterr().out
        assert all(sub in out for sub in ("fit", "validate", "test", "predict"))
        return []
    if "..." in words:  # "python -m sdpo_lightning fit ...": arguments as above
        return []
    _check_configs(words)
    config = _print_config(cli_main, list(words), capsys)
    reasons = []
    for key in (
        "model.source.model_name_or_path",
        "model.source.init_adapter",
        "model.hybrid.item_table",
        *(f"data.{name}" for name in READS[words[0]]),
    ):
        value = _dig(config, key)
        if not isinstance(value, str) or not value:
            continue
        if key == "model.source.model_name_or_path" and not value.startswith((".", "/", "runs/")):
            layout.notes.append(
                f"{cmd.id}: {value} comes from the Hugging Face hub (gated "
                "7B, GPU): parsed with --print_config only"
            )
            continue
        reasons.append(layout.check_input(value, key))
    root = _dig(config, "trainer.default_root_dir")
    assert root, "no trainer.default_root_dir"
    if words[0] == "fit":
        layout.written |= {f"{root}/export", f"{root}/checkpoints"}
    elif words[0] == "test":
        layout.written |= {f"{root}/summary.json", f"{root}/predictions.jsonl"}
    return [r for r in reasons if r]


def check_baseline(cmd: Command, layout: Layout, capsys: pytest.CaptureFixture) -> list[str]:
    """``sdpo-baseline``: ``--help`` lists every baseline; ``fit -c`` parses its config."""
    main = _entry_point("sdpo-baseline")
    words = cmd.words[1:]
    assert _run_exit(main, ["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("random", "most_popular", "item_knn", "GRU4Rec", "Caser", "SASRec"):
        assert name in out, f"sdpo-baseline --help does not list {name}"
    if not words or words[0] not in ("fit", "validate", "test"):
        return []
    _check_configs(words)
    config = _print_config(main, list(words), capsys)
    reasons = [
        layout.check_input(config["data"][key], f"data.{key}")
        for key in ("train_file", "test_file")
        if config["data"].get(key)
    ]
    init = config["model"].get("init_args", {})
    report = init.get("report_dir") or config["trainer"]["default_root_dir"]
    layout.written |= {f"{report}/summary.json", f"{report}/predictions.jsonl"}
    if init.get("item_table_dir"):
        layout.written.add(init["item_table_dir"])
    return [r for r in reasons if r]


def check_prepare(cmd: Command, layout: Layout, capsys: pytest.CaptureFixture) -> list[str]:
    """``sdpo-prepare DATASET --raw DIR --out DIR``: the arguments parse, the dataset is known."""
    from sdpo_lightning.data.prepare.cli import build_parser

    args = build_parser().parse_args(list(cmd.words[1:]))
    assert _run_exit(_entry_point("sdpo-prepare"), ["--help"]) == 0
    assert args.dataset in capsys.readouterr().out, f"unknown dataset {args.dataset}"
    layout.written |= {f"{args.out}/{name}.json" for name in ("train", "valid", "test", "stats")}
    raw = str(args.raw) if args.raw else None
    return [r for r in [layout.check_input(raw, "--raw")] if r] if raw else []


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """The shell's reading of a glob: ``*`` and ``?`` do not cross ``/`` (unlike fnmatch)."""
    parts = re.split(r"(\*|\?|\[[^]]*\])", pattern)
    table = {"*": "[^/]*", "?": "[^/]"}
    return re.compile(
        "".join(table.get(p, p if p.startswith("[") else re.escape(p)) for p in parts if p)
    )


def check_report(
    cmd: Command, layout: Layout, capsys: pytest.CaptureFixture, tmp_path: Path
) -> list[str]:
    """``sdpo-report PATTERNS``: each pattern matches files that exist or that earlier
    commands write; run it when every file is in the repository."""
    main = _entry_point("sdpo-report")
    words = list(cmd.words[1:])
    patterns, i = [], 0
    while i < len(words):
        if words[i] == "--out":
            i += 2
            continue
        if not words[i].startswith("--"):
            patterns.append(words[i])
        i += 1
    assert patterns, "sdpo-report without summaries"
    summaries = sorted(w for w in layout.written if w.endswith("/summary.json"))
    all_in_repo = True
    for pattern in patterns:
        in_repo = [] if pattern.startswith(OUTPUT_DIRS) else glob.glob(str(REPO / pattern))
        written = [s for s in summaries if _glob_regex(pattern).fullmatch(s)]
        assert in_repo or written, (
            f"{pattern} matches nothing the README's commands write: {summaries}"
        )
        all_in_repo &= bool(in_repo) and not written
    if all_in_repo:
        words = [str(REPO / w) if w in patterns else w for w in words]
        if "--out" in words:
            words[words.index("--out") + 1] = str(tmp_path / "table.md")
        assert _run_exit(main, words) == 0
        assert "| " in capsys.readouterr().out
    return []


def check_make(cmd: Command) -> None:
    """``make TARGET``: the Makefile has the target."""
    makefile = (REPO / "Makefile").read_text()
    for target in cmd.words[1:]:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"


def check_pip(cmd: Command) -> None:
    """``pip install -e ".[EXTRA]"``: setup.cfg declares the extras."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for word in cmd.words[2:]:
        match = re.fullmatch(r"\.\[([\w,]+)\]", word)
        if match:
            for extra in match.group(1).split(","):
                assert extra in cfg["options.extras_require"], f"no extra {extra!r}"


def check(cmd: Command, layout: Layout, capsys: pytest.CaptureFixture, tmp_path: Path) -> list[str]:
    """Check one command; returns the reasons it cannot run here (empty: it can)."""
    program = cmd.words[0]
    if program == "make":
        check_make(cmd)
        return []
    if program == "pip":
        check_pip(cmd)
        return []
    if program in ("source", ".") and len(cmd.words) == 2:
        venv = re.search(r"^VENV \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
        assert venv and cmd.words[1] == f"{venv.group(1)}/bin/activate", (
            f"{cmd.words[1]} is not the activate script of the Makefile's virtualenv"
        )
        return []
    if program == "python" and cmd.words[1:3] == ("-m", "sdpo_lightning"):
        assert importlib.util.find_spec("sdpo_lightning.__main__") is not None
        return check_sdpo(
            Command(cmd.line, cmd.text, ("sdpo", *cmd.words[3:]), cmd.source), layout, capsys
        )
    _installed(program)
    if program == "sdpo":
        return check_sdpo(cmd, layout, capsys)
    if program == "sdpo-baseline":
        return check_baseline(cmd, layout, capsys)
    if program == "sdpo-prepare":
        return check_prepare(cmd, layout, capsys)
    if program == "sdpo-report":
        return check_report(cmd, layout, capsys, tmp_path)
    raise AssertionError(f"README command with no check: {cmd.text!r}")


def test_readme_has_commands() -> None:
    """The parser finds the blocks (a README reshuffle must not silently empty this test)."""
    programs = {c.words[0] for c in COMMANDS if c.source == "README.md"}
    assert {"make", "sdpo", "sdpo-report", "sdpo-baseline", "sdpo-prepare"} <= programs
    assert len(COMMANDS) >= 15


def test_report_glob_matches_the_run_layout() -> None:
    """The Evaluation section's ``sdpo-report`` pattern names the ``runs/<exp>/<stage>/`` files
    the LastFM commands above it write (``runs/*/summary.json`` matched nothing)."""
    reports = [
        c
        for c in COMMANDS
        if c.words[0] == "sdpo-report" and any(w.startswith("runs/") for w in c.words)
    ]
    assert reports, "no sdpo-report command over runs/"
    for cmd in reports:
        for word in cmd.words[1:]:
            if word.startswith("runs/"):
                assert re.fullmatch(r"runs/[^/]+/[^/]+/summary\.json", word), word


@dataclass
class Checked:
    """The README commands checked so far, in order, and each one's outcome."""

    layout: Layout = field(default_factory=Layout)
    outcomes: list[list[str] | BaseException] = field(default_factory=list)


@pytest.fixture(scope="module")
def checked() -> Checked:
    """Shared by the per-command tests: a command may read what an earlier one writes."""
    return Checked()


@pytest.mark.parametrize("index", range(len(COMMANDS)), ids=[c.id for c in COMMANDS])
def test_readme_command_runs_as_written(
    index: int,
    checked: Checked,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Each command, after every earlier one (checked here if a filter left them out)."""
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [COMMANDS[index].words[0]])  # the CLIs see no pytest flags
    while len(checked.outcomes) <= index:
        cmd = COMMANDS[len(checked.outcomes)]
        try:
            checked.outcomes.append(check(cmd, checked.layout, capsys, tmp_path))
        except Exception as exc:  # noqa: BLE001 -- reported by that command's own test
            checked.outcomes.append(exc)
    for note in checked.layout.notes:
        print(f"NOTE: {note}")
    checked.layout.notes.clear()
    outcome, cmd = checked.outcomes[index], COMMANDS[index]
    if isinstance(outcome, BaseException):
        raise AssertionError(f"{cmd.source} line {cmd.line}: {cmd.text}") from outcome
    if outcome:
        reason = f"{cmd.source} line {cmd.line} needs what is absent here: " + "; ".join(outcome)
        print(f"SKIP: {reason}")
        pytest.skip(reason)
