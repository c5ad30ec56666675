"""The command line: ``python -m dfcore --help`` lists every stage of the workflow with one line, ``--version``
prints the installed version, every option of every stage has a plain-text help, and the ``likelihood`` stage
passes the experiment functions what its Snakemake rules pass them."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import dfcore
from dfcore.cli import STAGES, main
from dfcore.config import load_config

REPO = Path(__file__).resolve().parent.parent
TEST_CONFIG = REPO / "config" / "test.yaml"

# Every rule of the workflow and the command-line stage that runs the same experiment function.
RULE_STAGES = {
    "make_data": "make-data",
    "train_denoiser": "train",
    "train_trace": "train",
    "train_trace_target": "train",
    "train_trace_budget": "train",
    "nll": "nll",
    "trace_error": "trace-error",
    "trace_budget": "trace-budget",
    "likelihood_trace": "likelihood",
    "likelihood_dataset": "likelihood",
    "likelihood_benchmark": "likelihood",
    "likelihood_table2": "likelihood",
    "likelihood_heldout": "likelihood",
    "adjoint_classifier": "adjoint",
    "adjoint_mixture": "adjoint",
    "adjoint_digits": "adjoint",
    "ot_table3": "ot",
    "ot_convergence": "ot",
    "ot_protocols": "ot",
    "sd_tiny_pipeline": "sd",
    "sd_trace_net": "sd",
    "sd_nll": "sd",
    "sd_adjoint": "sd",
    "pretrained_model": "pretrained",
    "pretrained_digits": "pretrained",
    "pretrained_trace": "pretrained",
    "pretrained_bpd": "pretrained",
}
# Rules with no stage of their own: the default target and the summary of every output.
NO_STAGE = {"all", "summary"}
RST = re.compile(r"``|:(math|func|class|meth|mod|data|attr):`|\.\. math::")


def _workflow_rules() -> set[str]:
    text = "\n".join(path.read_text() for path in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")])
    return set(re.findall(r"^\s*rule (\w+):", text, re.M)) | set(re.findall(r"^\s*use rule \w+ as (\w+)", text, re.M))


def _help(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_stage_with_its_line(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = dict(re.findall(r"^  ([a-z0-9-]+) +(\S.*)$", out, re.M))
    assert {name: stage.description for name, stage in STAGES.items()} == {k: listed[k] for k in STAGES}
    for name, description in listed.items():
        if name in STAGES:
            assert "\n" not in description and len(description) <= 100, name
    assert not RST.search(out)


def test_every_workflow_rule_has_a_stage_in_the_help(capsys):
    rules = _workflow_rules()
    assert rules - NO_STAGE == set(RULE_STAGES), "map each new rule of workflow/rules/ to its stage in RULE_STAGES"
    assert main(["-h"]) == 0
    listed = set(re.findall(r"^  ([a-z0-9-]+) +\S", capsys.readouterr().out, re.M))
    missing = {rule: stage for rule, stage in RULE_STAGES.items() if stage not in listed}
    assert not missing, f"rules whose stage python -m dfcore --help does not list: {missing}"


def test_version_is_the_package_version():
    result = subprocess.run(
        [sys.executable, "-m", "dfcore", "--version"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == f"dfcore {dfcore.__version__}"


def test_no_stage_or_an_unknown_one_is_an_error(capsys):
    assert main([]) == 2
    assert "error: no stage given" in capsys.readouterr().err
    assert main(["nlll"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'nlll'" in err and "trace-error" in err


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _stage_parser(name: str, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser that stage ``name`` builds, caught when it starts parsing."""

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        raise _Parsed(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(_Parsed) as caught:
            STAGES[name].run([])
    return caught.value.parser


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_help_is_plain_and_every_option_has_help(name, monkeypatch, capsys):
    parser = _stage_parser(name, monkeypatch)
    assert parser.prog == f"python -m dfcore {name}" and parser.description == STAGES[name].description
    undocumented = [a.dest for a in parser._actions if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undocumented, f"{name}: options without help: {undocumented}"
    text = _help(capsys, [name, "--help"])
    assert not RST.search(text), f"{name} --help shows reStructuredText:\n{text}"


def _without_keys(rule: str) -> set[str]:
    """The keys that rule ``rule`` of likelihood.smk removes from the likelihood section (its params)."""
    text = (REPO / "workflow" / "rules" / "likelihood.smk").read_text()
    body = text[text.index(f"rule {rule}:") :]
    call = re.search(r"likelihood=without\((.*?)\)", body, re.S)
    assert call is not None, rule
    return set(re.findall(r'"(\w+)"', call[1]))


def test_likelihood_stage_passes_what_the_rules_pass(tmp_path, monkeypatch):
    from dfcore.experiments import likelihood as bench

    calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def recorder(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> pd.DataFrame:
            calls[name] = (args, kwargs)
            return pd.DataFrame({"method": ["x"]})

        return record

    for name in ("run_likelihood_dataset", "run_heldout_likelihood", "run_likelihood_benchmark"):
        monkeypatch.setattr(bench, name, recorder(name))
    cfg = load_config(TEST_CONFIG)
    lik, res, sched = cfg["likelihood"], tmp_path, cfg["likelihood"]["schedule"]
    dataset = lik["datasets"][0]
    base = ["--configfile", str(TEST_CONFIG), "--results", str(res)]

    assert main(["likelihood", "dataset", "--dataset", dataset, *base]) == 0
    args, kwargs = calls["run_likelihood_dataset"]
    assert set(lik) - set(args[0]) == _without_keys("likelihood_dataset")
    assert args[1:] == (
        res / "data" / f"{dataset}.zarr",
        res / "models" / f"{dataset}_{sched}_denoiser.pt",
        {"sq_norm": res / "models" / f"{dataset}_{sched}_trace_sq_norm.pt"},  # dftm is among the test methods
        res / "likelihood" / f"points_{dataset}.csv",
    )
    assert "dftm" in lik["methods"] and kwargs == {"dataset": dataset, "seed": cfg["seed"], "device": cfg["device"]}

    held = lik["heldout"]
    assert main(["likelihood", "heldout", *base]) == 0
    args, kwargs = calls["run_heldout_likelihood"]
    assert set(lik) - set(args[0]) == _without_keys("likelihood_heldout")
    assert args[1] == res / "data" / f"{held['train']}.zarr" and args[2] == res / "data" / f"{held['test']}.zarr"
    expected = {"dftm": "sq_norm", "dftm_residual": "residual"}
    assert args[4] == {
        target: res / "models" / f"{held['train']}_{sched}_trace_{target}.pt"
        for method, target in expected.items()
        if method in held["methods"]
    }
    assert kwargs["summary_csv"] == res / "likelihood" / "heldout.csv"

    assert main(["likelihood", "benchmark", *base]) == 0
    args, _ = calls["run_likelihood_benchmark"]
    assert args == (
        [res / "likelihood" / f"points_{name}.csv" for name in lik["datasets"]],
        res / "likelihood" / "benchmark.csv",
        res / "likelihood" / "benchmark.png",
        res / "likelihood" / "pareto.png",
    )


def test_likelihood_commands_on_a_dataset_need_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["likelihood", "table2", "--configfile", str(TEST_CONFIG)])
    assert exit_info.value.code == 2
    assert "likelihood table2 needs --dataset" in capsys.readouterr().err
