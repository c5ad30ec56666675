"""A rule's output goes to its log, and so does the traceback of the error that ends it."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from dfcore.logs import drop_log_messages, rule_log

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


# --------------------------------------------------------------------------------------------- #
# known-harmless third-party messages stay out of the logs


def test_no_profile_prints_shell_commands_while_every_rule_runs_a_script():
    """With `printshellcmds` Snakemake prints "Shell command: None" for every job of a `script:` rule."""
    rules = "".join(path.read_text() for path in (REPO / "workflow" / "rules").glob("*.smk"))
    assert "script:" in rules
    if re.search(r"^\s+shell:", rules, re.MULTILINE):
        pytest.skip("a rule has a shell command: printing it is useful")
    for profile in sorted((REPO / "profiles").glob("*/config.yaml")):
        assert "printshellcmds" not in yaml.safe_load(profile.read_text()), profile


@pytest.mark.parametrize("extra, printed", [((), 0), (("--printshellcmds",), 1)])
def test_a_script_rule_under_the_default_profile_prints_no_shell_command(tmp_path, extra, printed):
    (tmp_path / "Snakefile").write_text('rule a:\n    output: "out.txt"\n    script: "a.py"\n')
    (tmp_path / "a.py").write_text('open(snakemake.output[0], "w").write("x")\n')
    result = subprocess.run(
        [str(SNAKEMAKE), "-n", "--cores", "1", "--nolock", "--profile", str(REPO / "profiles" / "default"), *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (result.stdout + result.stderr).count("Shell command: None") == printed


def _string_coordinate_dataset():
    import numpy as np
    import xarray as xr

    return xr.Dataset(
        {"err": (("method", "t"), np.ones((2, 3)))}, coords={"method": ["vjp", "dftm_residual"], "t": [0.1, 0.5, 1.0]}
    )


def test_writing_a_zarr_store_warns_nothing(tmp_path):
    from dfcore.io import read_zarr, write_zarr

    ds = _string_coordinate_dataset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_zarr(ds, tmp_path / "a.zarr")
    assert [str(w.message) for w in caught] == []
    assert list(read_zarr(tmp_path / "a.zarr")["method"].values) == ["vjp", "dftm_residual"]
    # the same store written by xarray directly does warn: the filters of write_zarr are what silence it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds.to_zarr(tmp_path / "b.zarr", mode="w", consolidated=True)
    categories = {type(w.message).__name__ for w in caught}
    assert {"UnstableSpecificationWarning", "ZarrUserWarning"} <= categories, categories


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_torchvision_fallback_message_of_transformers_is_dropped():
    import dfcore.integrations.diffusers  # noqa: F401  (installs the filter)

    logger = logging.getLogger("transformers.utils.import_utils")
    keep = _Keep()
    logger.addHandler(keep)  # on the logger itself: transformers stops propagation at its root logger
    try:
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` for "
            "backward compatibility."
        )
        logger.warning("another message of transformers")
    finally:
        logger.removeHandler(keep)
    assert keep.messages == ["another message of transformers"]


def test_drop_log_messages_attaches_one_filter_per_message():
    name = "dfcore.test.quiet"
    first = drop_log_messages(name, "noise")
    assert drop_log_messages(name, "noise") is first
    assert logging.getLogger(name).filters == [first]
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, "some %s here", ("noise",), None)
    assert not first.filter(record)
    record.args = ("signal",)
    assert first.filter(record)
