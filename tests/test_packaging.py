"""Packaging: the library's dependencies, its extras, the constraints file that `make` installs, and the wheel.

The fast tests read pyproject.toml, requirements/constraints.txt, environment.yml and workflow/envs/ and import the
library with the optional packages blocked. The wheel test (opt-in: ``make test-wheel``, run by .ci/run) builds
the wheel, installs it into a fresh virtual environment with the core dependencies only, imports ``dfcore``, runs
the README's Python tour there, and checks that Snakemake and diffusers are not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/, for markdown_blocks

from markdown_blocks import PIPELINE_TAG, code_blocks  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "requirements" / "constraints.txt"

# Imported only by the workflow, the Stable Diffusion integration or the peer adapters; never by `import dfcore`.
OPTIONAL_MODULES = ("snakemake", "diffusers", "transformers", "accelerate", "ot", "sklearn", "flow_matching")
WORKFLOW_EXTRAS = ("workflow", "sd", "peers")


def _requirements(group: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    specs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(spec) for spec in specs]


def _pins() -> dict[str, Version]:
    pins = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#")[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"{CONSTRAINTS.name}: {raw!r} is not an exact pin NAME==VERSION"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def test_core_dependencies_are_ranges_without_workflow_software():
    core = _requirements()
    names = {canonicalize_name(req.name) for req in core}
    for req in core:
        assert not any(spec.operator == "==" for spec in req.specifier), f"core dependency pinned exactly: {req}"
        assert req.specifier, f"core dependency without a lower bound: {req}"
    for heavy in ("snakemake", "snakemake-executor-plugin-slurm", "diffusers", "transformers", "pot", "scikit-learn"):
        assert heavy not in names, f"{heavy} is a core dependency; it belongs in an extra"
    assert Requirement("torch>=2.4").specifier == next(r for r in core if r.name == "torch").specifier


def test_extras_hold_the_optional_software():
    extras = {
        group: {canonicalize_name(r.name) for r in _requirements(group)}
        for group in PYPROJECT["project"]["optional-dependencies"]
    }
    assert {"snakemake", "snakemake-executor-plugin-slurm", "pot", "scikit-learn"} <= extras["workflow"]
    assert {"diffusers", "transformers", "accelerate"} <= extras["sd"]
    assert {"flow-matching"} <= extras["peers"]
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= extras["docs"]
    assert {"pytest", "ruff", "mypy"} <= extras["dev"]
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"


def test_constraints_pin_every_requirement_within_its_range():
    pins = _pins()
    assert str(pins["torch"]) == "2.13.0", "make must install the torch 2.13.0 wheel that lies on disk"
    groups = [None, *PYPROJECT["project"]["optional-dependencies"]]
    for group in groups:
        for req in _requirements(group):
            name = canonicalize_name(req.name)
            assert name in pins, f"{CONSTRAINTS.name} has no pin for {req} ({group or 'core'})"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{CONSTRAINTS.name} pins {name}=={pins[name]}, outside pyproject's {req} ({group or 'core'})"
            )


def test_make_installs_with_the_constraints_and_every_extra():
    makefile = (REPO / "Makefile").read_text()
    assert "-c $(CONSTRAINTS)" in makefile and "CONSTRAINTS := requirements/constraints.txt" in makefile
    extras = next(line for line in makefile.splitlines() if line.startswith("EXTRAS :="))
    assert set(extras.split(":=")[1].strip().split(",")) == set(PYPROJECT["project"]["optional-dependencies"])


@pytest.mark.parametrize("env_file", ["environment.yml", "workflow/envs/dfcore.yaml"])
def test_conda_environments_install_the_workflow_extras(env_file):
    env = yaml.safe_load((REPO / env_file).read_text())
    pip = next(dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict) and "pip" in dep)
    assert "python=3.11" in env["dependencies"]
    constraint = next(line for line in pip if line.startswith("-c "))
    assert (REPO / env_file).parent.joinpath(constraint[3:].strip()).resolve() == CONSTRAINTS.resolve()
    package = next(line for line in pip if line.startswith("-e "))
    requested = set(package.split("[", 1)[1].rstrip("]").split(","))
    assert set(WORKFLOW_EXTRAS) <= requested, f"{env_file} installs {package}; the workflow needs {WORKFLOW_EXTRAS}"


def test_package_files_and_version():
    import dfcore

    assert (REPO / "dfcore" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["dfcore"]
    assert PYPROJECT["project"]["dynamic"] == ["version"] and "fallback_version" in PYPROJECT["tool"]["setuptools_scm"]
    assert "MIT License" in (REPO / "LICENSE").read_text()
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert citation["preferred-citation"]["title"].startswith("Efficiently Access Diffusion Fisher")
    assert citation["preferred-citation"]["authors"][0]["family-names"] == "Wang"
    assert Version(dfcore.__version__) >= Version("0") or dfcore.__version__ == "0+unknown"


_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}}")
        return None
sys.meta_path.insert(0, Blocker())
import pkgutil, importlib, dfcore
skip = (  # the Stable Diffusion stage and the diffusers-model adapter need diffusers
    "dfcore.integrations.diffusers",
    "dfcore.experiments.sd",
    "dfcore.integrations.pretrained_train",
)
names = [m.name for m in pkgutil.walk_packages(dfcore.__path__, "dfcore.") if not m.name.startswith(skip)]
for name in names:
    if name != "dfcore.__main__":
        importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print(len(names))
"""


def test_library_imports_without_optional_packages():
    """Every module but the diffusers ones imports with the optional packages made unimportable."""
    code = _BLOCKER.format(blocked=OPTIONAL_MODULES)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 20  # the walk found the package's modules


@pytest.mark.skipif(os.environ.get("DFCORE_TEST_WHEEL") != "1", reason="set DFCORE_TEST_WHEEL=1 (make test-wheel)")
def test_wheel_in_a_fresh_venv_without_extras(tmp_path):
    """The built wheel with its core dependencies only: ``import dfcore`` and the README tour work, and neither
    Snakemake nor diffusers is installed."""
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    # Without PYTHONPATH: a source tree on the path would make pip take dfcore as installed already.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The wheel is built from a copy of the tree, so that the build leaves nothing (build/, dfcore.egg-info) in the
    # repository; the copy has no git metadata, so it gets the version that setuptools-scm reads from the repository.
    version = subprocess.run(
        [sys.executable, "-m", "setuptools_scm"], capture_output=True, text=True, cwd=REPO, env=env, check=True
    ).stdout.strip()
    source = tmp_path / "source"
    skip = (
        ".git",
        ".venv",
        "results",
        "resources",
        "site",
        "build",
        "*.egg-info",
        ".snakemake",
        "__pycache__",
        ".*cache",
    )
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
        env={**env, "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_DFCORE": version},
    )
    (wheel,) = wheels.glob("dfcore-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # pip of this environment installs into it (--python)
    python = env_dir / "bin" / "python"
    # --no-compile: byte-compiling torch takes longer than installing it.
    subprocess.run(
        [*pip, "--python", str(python), "install", "-q", "--no-compile", "-c", str(CONSTRAINTS), str(wheel)],
        check=True,
        timeout=600,
        env=env,
    )
    # the block tagged PIPELINE_TAG needs diffusers and a pipeline folder (tests/test_pretrained_api.py runs it)
    tour = [block for block in code_blocks(REPO / "README.md", "python") if PIPELINE_TAG not in block.tags]
    assert tour, "README.md has no python block"
    script = "\n".join(block.code for block in tour)
    check = (
        "import importlib.util, dfcore\n"
        "assert dfcore.__file__.startswith(sys.prefix), dfcore.__file__\n"
        f"missing = [m for m in {OPTIONAL_MODULES!r} if importlib.util.find_spec(m) is None]\n"
        f"assert missing == list({OPTIONAL_MODULES!r}), missing\n"
        "print('version', dfcore.__version__)\n"
    )
    # Run outside the repository so that the source tree is not on sys.path.
    result = subprocess.run(
        [str(python), "-c", "import sys\n" + script + check],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    installed = result.stdout.split("version")[-1].strip()
    assert installed == version == wheel.name.split("-")[1], (installed, version, wheel.name)
