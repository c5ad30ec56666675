"""A rule's output goes to its log, and so does the traceback of the error that ends it."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dfcore.logs import rule_log

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _fail_inside(log: Path) -> None:
    with rule_log(log):
        print("printed")
        print("on stderr", file=sys.stderr)
        logging.getLogger("dfcore.test").info("logged")
        raise RuntimeError("the rule broke")


def test_a_failing_body_leaves_its_traceback_in_the_log(tmp_path):
    out, err, handlers = sys.stdout, sys.stderr, list(logging.getLogger().handlers)
    log = tmp_path / "logs" / "rule.log"
    with pytest.raises(RuntimeError, match="the rule broke"):
        _fail_inside(log)
    text = log.read_text()
    for line in [
        "printed",
        "on stderr",
        "dfcore.test logged",
        "Traceback (most recent call last):",
        "in _fail_inside",
        "RuntimeError: the rule broke",
    ]:
        assert line in text, (line, text)
    assert text.index("logged") < text.index("Traceback")
    assert (sys.stdout, sys.stderr) == (out, err)  # the streams are back, not a closed file
    assert logging.getLogger().handlers == handlers


def test_a_clean_exit_writes_no_traceback(tmp_path):
    log = tmp_path / "rule.log"
    with rule_log(log) as stream:
        print("done")
    assert stream.closed
    assert log.read_text() == "done\n"
    with rule_log(log, mode="a"):
        print("again")
    assert log.read_text() == "done\nagain\n"


def test_every_rule_script_sends_its_output_through_rule_log():
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert len(scripts) >= 11
    for script in scripts:
        text = script.read_text()
        assert "with rule_log(snakemake.log[0]" in text, script.name
        assert not re.search(r"sys\.std(err|out)\s*=|open\(snakemake\.log|logging\.basicConfig", text), script.name


_SNAKEFILE = textwrap.dedent(
    """
    rule broken:
        output: "out.txt"
        log: "logs/broken.log"
        script: "broken.py"
    """
)

_SCRIPT = textwrap.dedent(
    """
    import warnings

    from dfcore.logs import rule_log

    def compute():
        raise ValueError("Zarr store results/data/x.zarr: array 'x' is missing 1 of 1 chunks")

    with rule_log(snakemake.log[0]):
        print("started")
        warnings.warn("a warning")
        compute()
    """
)


def test_a_failing_snakemake_rule_leaves_its_traceback_in_its_log(tmp_path):
    (tmp_path / "Snakefile").write_text(_SNAKEFILE)
    (tmp_path / "broken.py").write_text(_SCRIPT)
    result = subprocess.run(
        [str(SNAKEMAKE), "--cores", "1", "--nolock"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    text = (tmp_path / "logs" / "broken.log").read_text()
    assert "started" in text and "UserWarning: a warning" in text, text
    assert "Traceback (most recent call last):" in text and "in compute" in text, text
    assert "ValueError: Zarr store results/data/x.zarr: array 'x' is missing" in text, text
    assert "lost sys.stderr" not in result.stdout + result.stderr
