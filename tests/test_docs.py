"""Every code block of the README, the getting-started and workflow pages and the tutorials runs.

Python blocks are executed in order, one namespace per file (a tutorial's later blocks use its earlier ones);
their own asserts check the numbers they print. Shell blocks are read command by command: ``python -m dfcore``
help and config checks are run, Snakemake commands are dry-run (``-n``) in a scratch copy of the repository
(so that a command whose arguments Snakemake reads differently from what the page says fails here), and the
rest must match a rule of SKIPPED that says why it is not run. The commands at the top of
config/likelihood_cpu.yaml and config/trace_budget.yaml are dry-run the same way.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for markdown_blocks and workflow_helpers

from markdown_blocks import PIPELINE_TAG, CodeBlock, code_blocks  # noqa: E402
from workflow_helpers import REPO, SNAKEMAKE, copy_repo  # noqa: E402

DOCUMENTS = [
    REPO / "README.md",
    REPO / "docs" / "getting-started.md",
    REPO / "docs" / "workflow.md",
    *sorted((REPO / "docs" / "tutorials").glob("*.md")),
]
SHELLS = ("bash", "sh", "shell", "console")

# Commands that are run as they are (cheap, no output files).
RUN = [re.compile(r"^python -m dfcore( [\w-]+)? --help$"), re.compile(r"^python -m dfcore --version$")]
# Commands that are not run here, and why.
SKIPPED = {
    r"^make ": "a Makefile target: CI runs make test, make test-wheel and make docs-check itself",
    r"^python -m dfcore (make-data|train|nll) ": "writes data or trains a network (minutes); tests/test_workflow.py "
    "runs the same experiment functions through the workflow",
    r"^python -m dfcore (likelihood --model|train-trace) ": "reads a user's pipeline and image folders; "
    "tests/test_pretrained_cli.py runs the same commands on a tiny pipeline",
    r"^(pip|\.venv/bin/pip) install ": "an installation (make does it; tests/test_packaging.py checks the wheel)",
}


def _python_blocks(path: Path) -> list[CodeBlock]:
    return [block for block in code_blocks(path, "python") if PIPELINE_TAG not in block.tags]


def _commands(block: CodeBlock) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and prompts dropped."""
    commands, current = [], ""
    for raw in block.code.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        line = line.removeprefix("$ ").replace("[", "").replace("]", "")  # [optional arguments] are run too
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line.strip()
        if current:
            commands.append(re.sub(r"\s+", " ", current))
        current = ""
    return commands


def _shell_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCUMENTS:
        for block in code_blocks(path):
            if block.language in SHELLS:
                found += [(block.name, command) for command in _commands(block)]
    return found


def _classify(command: str) -> tuple[str, str]:
    if any(pattern.match(command) for pattern in RUN):
        return "run", ""
    if re.match(r"^(\.venv/bin/)?snakemake ", command):
        return "dryrun", ""
    for pattern, reason in SKIPPED.items():
        if re.match(pattern, command):
            return "skip", reason
    return "unknown", ""


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_blocks_run(path, capsys):
    blocks = _python_blocks(path)
    if path.parent.name == "tutorials":
        assert blocks, f"{path.name} has no python block"
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for block in blocks:
        try:
            exec(compile(block.code, block.name, "exec"), namespace)  # noqa: S102 (the documented code)
        except Exception as err:
            raise AssertionError(f"{block.name}: the python block fails: {type(err).__name__}: {err}") from err


def test_every_shell_command_is_run_dry_run_or_skipped_with_a_reason():
    commands = _shell_commands()
    assert len(commands) >= 5
    unknown = [f"{name}: {command}" for name, command in commands if _classify(command)[0] == "unknown"]
    assert not unknown, "shell commands of the docs that no rule of tests/test_docs.py covers:\n" + "\n".join(unknown)


def _run_commands() -> list[str]:
    return sorted({command for _, command in _shell_commands() if _classify(command)[0] == "run"})


@pytest.mark.parametrize("command", _run_commands())
def test_cheap_commands_run(command):
    argv = [sys.executable, *shlex.split(command)[1:]]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), f"{command} printed nothing"


def _likelihood_cpu_command(name: str = "likelihood_cpu.yaml") -> str:
    """The command in the header comment of config/likelihood_cpu.yaml (or of config/``name``)."""
    lines = [line[1:].strip() for line in (REPO / "config" / name).read_text().splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("snakemake "))
    command = ""
    for line in lines[start:]:
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return command.strip()


def _dryrun_commands() -> list[str]:
    found = {command for _, command in _shell_commands() if _classify(command)[0] == "dryrun"}
    return sorted(found | {_likelihood_cpu_command(), _likelihood_cpu_command("trace_budget.yaml")})


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("docs") / "repo")


def _dry_run(command: str, work: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(command)
    return subprocess.run(
        [str(SNAKEMAKE), "-n", "--quiet", "rules", *argv[1:]], capture_output=True, text=True, cwd=work, timeout=300
    )


@pytest.fixture(scope="module")
def dry_runs(scratch) -> Iterator[dict[str, Future]]:
    """The dry run of every documented Snakemake command in the scratch copy, all started at once and run two at
    a time (each is one single-threaded process; a dry run writes no output)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {command: pool.submit(_dry_run, command, scratch) for command in _dryrun_commands()}


@pytest.mark.parametrize("command", _dryrun_commands())
def test_snakemake_commands_dry_run(command, dry_runs):
    """Each documented Snakemake command, with ``-n`` added, plans its jobs without an error."""
    result = dry_runs[command].result()
    assert result.returncode == 0, f"{command} -n: exit {result.returncode}\n{result.stderr[-3000:]}"
    targets = [arg for arg in shlex.split(command)[1:] if arg.startswith("results/")]
    if targets:  # the targets were read as targets, not as config files
        assert "configfile" not in result.stderr.lower() or "error" not in result.stderr.lower()


def test_likelihood_cpu_command_puts_targets_before_configfile():
    argv = shlex.split(_likelihood_cpu_command())
    configfile = argv.index("--configfile")
    assert argv[configfile + 1 :] == ["config/likelihood_cpu.yaml"], argv
    assert any(arg.endswith("benchmark.csv") for arg in argv[:configfile])


def test_trace_budget_command_puts_the_target_before_configfile():
    argv = shlex.split(_likelihood_cpu_command("trace_budget.yaml"))
    configfile = argv.index("--configfile")
    assert argv[configfile + 1 :] == ["config/trace_budget.yaml"], argv
    assert argv[configfile - 1] == "results/trace_error/convergence.csv"
