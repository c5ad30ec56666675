"""Optimal-transport test (Alg. 2, Table 3) against independent computations.

- the sign convention B = f I - 1/2 g^2 F: Alg. 2 converges (first order in dt) to the closed-form
  (alpha_t/alpha_1)^2 J^{-T} of a Gaussian's linear PF-ODE map, and matches the autograd Jacobian of the
  Euler map (which uses only the score, never the Fisher);
- affine data (collinear Diracs, one Gaussian) give a symmetric A to round-off and a zero POT gap;
  non-affine data give a clearly non-zero index and a positive POT gap, with all three verdicts agreeing;
- the asymmetry index and the POT gap on hand-computed cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dfcore.config import ConfigError, load_yaml, validate_config
from dfcore.data.ot_mixtures import make_ot_mixture, sample_prior
from dfcore.experiments.ot import is_affine, run_table3
from dfcore.io import read_zarr
from dfcore.mixtures import DiracMixture
from dfcore.ot import asymmetry_index, flow_jacobian, fundamental_matrix, min_sym_eigenvalue, pairing_gap
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid

SCHEDULES = ["VE", "VP", "subVP", "EDM"]


T_MIN = {"VE": 1e-3, "VP": 1e-3, "subVP": 1e-3, "EDM": 2.5e-5}
AFFINE = {"kind": "dirac", "points": [[0.0, 0.0], [0.0, 0.5], [0.0, -0.6]]}
NON_AFFINE = {"kind": "dirac", "points": [[0.5, 0.0], [0.0, -0.5], [0.0, 0.0]]}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-matrix relative Frobenius error, shape (B,)."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def alpha_ratio_sq(schedule, times) -> torch.Tensor:
    alpha = schedule(times[[0, -1]])[0]
    return (alpha[1] / alpha[0]) ** 2


# ------------------------------------------------------------------------------------------------
# Building blocks
# ------------------------------------------------------------------------------------------------


def test_asymmetry_index_hand_computed():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    # O = [[0, 2], [3, 0]]: ||O - O^T|| = sqrt(2) * 1, ||O|| = sqrt(13).
    assert asymmetry_index(a).item() == pytest.approx(1 / math.sqrt(13), rel=1e-14)
    # Without zeroing the diagonal: sqrt(2) / (sqrt(2) sqrt(30)).
    assert asymmetry_index(a, zero_diagonal=False).item() == pytest.approx(1 / math.sqrt(30), rel=1e-14)
    assert asymmetry_index(a + a.T).item() == 0.0
    assert asymmetry_index(torch.diag(torch.tensor([2.0, 5.0]))).item() == 0.0  # O = 0
    skew = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    assert asymmetry_index(skew).item() == pytest.approx(math.sqrt(2))
    assert asymmetry_index(7.5 * a).item() == pytest.approx(asymmetry_index(a).item(), rel=1e-14)


def test_verdict_same_for_j_and_inverse_transpose():
    """J symmetric <=> J^{-T} symmetric; in 2-D even the index is equal (adj(J) swaps and negates the off-diagonal)."""
    gen = torch.Generator().manual_seed(0)
    j2 = torch.randn(50, 2, 2, generator=gen, dtype=torch.float64) + 3 * torch.eye(2, dtype=torch.float64)
    inv_t = torch.linalg.inv(j2).transpose(1, 2)
    torch.testing.assert_close(asymmetry_index(inv_t), asymmetry_index(j2), rtol=1e-10, atol=1e-14)
    s3 = torch.randn(20, 3, 3, generator=gen, dtype=torch.float64)
    spd = s3 @ s3.transpose(1, 2) + 0.5 * torch.eye(3, dtype=torch.float64)
    assert asymmetry_index(torch.linalg.inv(spd).transpose(1, 2)).max() < 1e-12
    assert (min_sym_eigenvalue(torch.linalg.inv(spd)) > 0).all()


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("spacing", ["uniform", "log_snr", "edm"])
def test_time_grid(name, spacing):
    schedule = get_schedule(name)
    grid = time_grid(50, T_MIN[name], spacing=spacing, schedule=schedule)
    assert grid[0] == 1.0 and grid[-1] == T_MIN[name] and (grid[1:] < grid[:-1]).all()
    alpha, sigma = schedule(grid)
    log_r = torch.log(sigma / alpha)
    if spacing == "log_snr":  # equal steps in log(sigma/alpha), checked on the schedule's own values
        steps = log_r[1:] - log_r[:-1]
        torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-9, atol=0)
    if spacing == "edm":
        root = torch.exp(log_r / 7.0)
        steps = root[1:] - root[:-1]
        torch.testing.assert_close(steps, steps.mean().expand_as(steps), rtol=1e-8, atol=0)


def test_pairing_gap_hand_computed():
    xs = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    straight = pairing_gap(xs, xs + 5.0)
    assert straight["gap"] == pytest.approx(0.0, abs=1e-12) and straight["optimal_cost"] == pytest.approx(25.0)
    crossed = pairing_gap(xs, torch.tensor([[1.0], [0.0]], dtype=torch.float64))
    assert crossed["pairing_cost"] == pytest.approx(1.0) and crossed["optimal_cost"] == pytest.approx(0.0, abs=1e-14)
    assert crossed["gap"] == pytest.approx(1.0)


def test_datasets_and_affinity():
    assert is_affine(make_ot_mixture(AFFINE, 2)) and not is_affine(make_ot_mixture(NON_AFFINE, 2))
    assert is_affine(make_ot_mixture({"kind": "collinear", "num_points": 20}, 4, seed=3))
    assert not is_affine(make_ot_mixture({"kind": "random_dirac", "num_points": 20}, 2))
    assert is_affine(make_ot_mixture({"kind": "gaussian"}, 3))
    assert not is_affine(make_ot_mixture({"kind": "gaussian_mixture", "num_components": 2}, 2))
    padded = make_ot_mixture(NON_AFFINE, 3).points
    assert padded.shape == (3, 3) and (padded[:, 2] == 0).all()
    cov = make_ot_mixture({"kind": "gaussian"}, 2).covs[0]
    assert abs(cov[0, 1].item()) > 1e-3  # a full covariance, not axis-aligned
    with pytest.raises(ValueError, match="but the dimension is"):
        make_ot_mixture(NON_AFFINE, 1)
    with pytest.raises(ValueError, match="kind"):
        make_ot_mixture({"kind": "moons"}, 2)


def test_config_section_defaults_and_errors():
    cfg = validate_config({})
    assert cfg["ot"]["num_starts"] == 1000 and cfg["ot"]["update"] == "adjoint"
    assert set(cfg["ot"]["datasets"]) >= {"single_gaussian", "affine", "non_affine"}
    with pytest.raises(ConfigError, match="ot.update"):
        validate_config({"ot": {"update": "rk4"}})
    with pytest.raises(ConfigError, match="ot.t_min.VE"):
        validate_config({"ot": {"t_min": {"VE": 0.0}}})
    with pytest.raises(ConfigError, match="ot.datasets.bad.kind"):
        validate_config({"ot": {"datasets": {"bad": {"kind": "moons"}}}})


# ------------------------------------------------------------------------------------------------
# Sign convention and confirmation (i): autograd Jacobian of the same Euler map
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("update", ["adjoint", "euler"])
def test_sign_convention_closed_form_gaussian(name, update):
    r"""For N(0, Sigma) the PF-ODE map is linear, J = (C_t C_1^{-1})^{1/2} with C_t = alpha_t^2 Sigma + sigma_t^2 I
    (all C_t commute), so Alg. 2 with B = f I - 1/2 g^2 F must tend to (alpha_t/alpha_1)^2 (C_1 C_t^{-1})^{1/2}, at first order."""
    schedule = get_schedule(name)
    mixture = make_ot_mixture({"kind": "gaussian"}, 2)
    cov = mixture.covs[0]
    x1 = sample_prior(mixture, schedule, 3, seed=1)
    errors = []
    for steps in (100, 200):
        times = time_grid(steps, T_MIN[name], spacing="log_snr", schedule=schedule)
        alpha, sigma = schedule(times[[0, -1]])
        c1, ct = (alpha[i] ** 2 * cov + sigma[i] ** 2 * torch.eye(2, dtype=torch.float64) for i in (0, 1))
        evals, evecs = torch.linalg.eigh(c1)
        ratio = evals / torch.diagonal(evecs.T @ ct @ evecs)  # C_1 C_t^{-1} in the common eigenbasis
        closed = alpha_ratio_sq(schedule, times) * (evecs * ratio.sqrt()) @ evecs.T
        res = fundamental_matrix(mixture, schedule, x1, times, update=update)
        errors.append(rel_err(res.fundamental, closed.expand_as(res.fundamental)).max().item())
    # First-order convergence to the closed form. The opposite sign (B = f I + 1/2 g^2 F) would tend to
    # (alpha ratio)^2 J instead, which differs from J^{-T} by orders of magnitude (sigma_1/sigma_tmin >= 100).
    assert errors[0] < 0.7 and 0.4 < errors[1] / errors[0] < 0.7, errors


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize(
    "spec",
    [NON_AFFINE, {"kind": "gaussian_mixture", "num_components": 3}, {"kind": "gaussian"}],
    ids=["nonaffine", "gmm", "gauss"],
)
def test_alg2_matches_autograd_jacobian(name, spec):
    """Adjoint update: A == (alpha_end/alpha_1)^2 J^{-T}, J by autograd through the same Euler solver (bar: 1e-4)."""
    schedule = get_schedule(name)
    mixture = make_ot_mixture(spec, 2)
    x1 = sample_prior(mixture, schedule, 8, seed=2)
    times = time_grid(60, T_MIN[name], spacing="log_snr", schedule=schedule)
    x_end, jac = flow_jacobian(mixture, schedule, x1, times)
    res = fundamental_matrix(mixture, schedule, x1, times, update="adjoint")
    torch.testing.assert_close(res.x_end, x_end, rtol=1e-13, atol=1e-13)  # the very same path
    ref = alpha_ratio_sq(schedule, times) * torch.linalg.inv(jac).transpose(1, 2)
    assert rel_err(res.fundamental, ref).max() < 1e-10
    # Same verdict from J itself.
    assert (asymmetry_index(jac) > 1e-3).any() == (asymmetry_index(res.fundamental) > 1e-3).any()


@pytest.mark.parametrize("name", ["VE"])
def test_euler_update_converges_at_first_order(name):
    """The authors' literal A <- A + dt B A differs from the discrete adjoint (= autograd J^{-T}, tested above)
    by O(dt): halving dt halves the error."""
    schedule = get_schedule(name)
    mixture = make_ot_mixture(NON_AFFINE, 2)
    x1 = sample_prior(mixture, schedule, 1, seed=3)
    errors = []
    for steps in (200, 400):
        times = time_grid(steps, T_MIN[name], spacing="log_snr", schedule=schedule)
        ref = fundamental_matrix(mixture, schedule, x1, times, update="adjoint").fundamental
        res = fundamental_matrix(mixture, schedule, x1, times, update="euler")
        errors.append(rel_err(res.fundamental, ref).max().item())
    assert 0.35 < errors[1] / errors[0] < 0.65, errors


# ------------------------------------------------------------------------------------------------
# Table 3 rows and confirmation (ii): POT
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("update", ["adjoint", "euler"])
@pytest.mark.parametrize(
    "spec,dim",
    [
        (AFFINE, 2),
        ({"kind": "collinear", "num_points": 32}, 2),
        ({"kind": "collinear", "num_points": 16}, 3),
        ({"kind": "gaussian"}, 2),
        ({"kind": "gaussian"}, 3),
    ],
    ids=["authors-affine", "collinear-2d", "collinear-3d", "gauss-2d", "gauss-3d"],
)
def test_affine_rows_are_zero(name, update, spec, dim):
    """Affine data: A symmetric to 1e-10 (positive definite), POT gap at round-off.

    The authors' points and the Gaussians are exact. Points on a rotated line are collinear only to
    float64 round-off eps |y|; near t_min the Fisher resolves that at the relative level
    eps |y|^2 alpha^2 / sigma^2 (about 1e-8 for sub-VP, sigma(1e-3) = 1e-4), which bounds their index.
    """
    schedule = get_schedule(name)
    mixture = make_ot_mixture(spec, dim, seed=5)
    x1 = sample_prior(mixture, schedule, 64, seed=4)
    times = time_grid(60, T_MIN[name], spacing="log_snr", schedule=schedule)
    res = fundamental_matrix(mixture, schedule, x1, times, update=update)
    assert torch.isfinite(res.fundamental).all()
    bound = 1e-10
    if spec["kind"] == "collinear":
        alpha, sigma = schedule(times[-1:])
        y_max = mixture.points.norm(dim=1).max()
        bound = max(bound, 10 * torch.finfo(torch.float64).eps * (y_max * alpha / sigma).pow(2).item())
    assert asymmetry_index(res.fundamental).max() < bound
    assert asymmetry_index(res.fundamental, zero_diagonal=False).max() < bound
    if update == "adjoint":  # M_k^{-1} is SPD when the Euler step is (min_step_eigenvalue > 0)
        assert (res.min_step_eigenvalue > 0).all() and (min_sym_eigenvalue(res.fundamental) > 0).all()
        assert abs(pairing_gap(res.x_start, res.x_end)["relative_gap"]) < 1e-10


@pytest.mark.parametrize("name", SCHEDULES)
def test_non_affine_rows_are_clearly_nonzero_and_pot_agrees(name):
    schedule = get_schedule(name)
    mixture = make_ot_mixture(NON_AFFINE, 2)
    x1 = sample_prior(mixture, schedule, 300, seed=4)
    res = fundamental_matrix(mixture, schedule, x1, time_grid(100, T_MIN[name], spacing="log_snr", schedule=schedule))
    asym = asymmetry_index(res.fundamental)
    assert asym.mean() > 0.1 and (asym > 1e-8).float().mean() > 0.9
    gap = pairing_gap(res.x_start, res.x_end)
    assert gap["relative_gap"] > 1e-7 and gap["gap"] > 1e-8  # far above LP round-off (~1e-15 relative)


def test_no_nan_with_tiny_t_min():
    schedule = get_schedule("EDM")
    mixture = make_ot_mixture({"kind": "random_dirac", "num_points": 50}, 2)
    x1 = sample_prior(mixture, schedule, 32, seed=0)
    res = fundamental_matrix(mixture, schedule, x1, time_grid(100, 1e-6, spacing="log_snr", schedule=schedule), keep=4)
    assert torch.isfinite(res.fundamental).all() and torch.isfinite(res.path).all()
    assert (res.min_step_eigenvalue > 0).all()
    assert res.path.shape == (4, 101, 2) and res.fundamental_path.shape == (4, 101, 2, 2)


def test_run_table3_writes_consistent_outputs(tmp_path):
    cfg = validate_config(load_yaml("config/test.yaml"))
    ot_cfg = {**cfg["ot"], "schedules": ["VE", "VP"], "num_starts": 32, "num_steps": 30}
    out = {
        "csv_path": tmp_path / "table3.csv",
        "markdown_path": tmp_path / "table3.md",
        "heatmap_path": tmp_path / "heat.png",
        "fundamental_zarr": tmp_path / "fundamental.zarr",
        "paths_zarr": tmp_path / "paths.zarr",
    }
    table = run_table3(ot_cfg, cfg["schedules"], seed=0, device="cpu", progress=False, **out)
    assert len(table) == 2 * len(ot_cfg["datasets"]) and table["verdicts_agree"].all()
    affine = table[table["affine_data"]]
    assert (affine["asym_max"] < 1e-10).all() and (affine["verdict"] == "Monge").all()
    assert (table[~table["affine_data"]]["verdict"] == "not Monge").all()
    assert (table["autograd_rel_err"] < 1e-4).all()
    ds = read_zarr(out["fundamental_zarr"])
    assert ds["fundamental"].dims == ("schedule", "dataset", "start", "row", "col")
    np.testing.assert_allclose(
        ds["asymmetry"].mean("start").sel(schedule="VP", dataset="non_affine").item(),
        table.set_index(["schedule", "dataset"]).loc[("VP", "non_affine"), "asym_mean"],
        rtol=1e-5,
    )
    paths = read_zarr(out["paths_zarr"])
    assert paths["path"].sizes["step"] == 31 and "t" in paths.coords and paths.attrs["git_revision"]
    assert "| dataset" in out["markdown_path"].read_text() and out["heatmap_path"].stat().st_size > 0


@pytest.mark.parametrize("name", ["VE", "VP"])
def test_round_off_asymmetry_is_reported_as_zero(name):
    """Axis-aligned affine data: Alg. 2's A is exactly diagonal. The autograd A of the same flow computed on the
    rotated data and rotated back agrees with it to ~1e-15, yet its off-diagonal round-off alone scores ~40 % on
    the scale-invariant index without the floor."""
    schedule = get_schedule(name)
    points = torch.tensor([[0.0, 0.0], [0.0, 0.5], [0.0, -0.6]], dtype=torch.float64)
    mixture = DiracMixture(points)
    x1 = sample_prior(mixture, schedule, 16, seed=4)
    times = time_grid(40, T_MIN[name], spacing="log_snr", schedule=schedule)
    res = fundamental_matrix(mixture, schedule, x1, times, update="adjoint")
    angle = torch.tensor(0.3, dtype=torch.float64)
    rot = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    _, jac_rotated = flow_jacobian(DiracMixture(points @ rot.T), schedule, x1 @ rot.T, times)
    jac = rot.T @ jac_rotated @ rot
    ref = alpha_ratio_sq(schedule, times) * torch.linalg.inv(jac).transpose(1, 2)
    assert rel_err(res.fundamental, ref).max() < 1e-13
    off = ref - torch.diag_embed(torch.diagonal(ref, dim1=1, dim2=2))
    assert (torch.linalg.matrix_norm(off) / torch.linalg.matrix_norm(ref)).max() < 1e-13  # round-off only
    assert asymmetry_index(ref, floor=0.0).mean() > 0.1  # meaningless without the floor
    assert (asymmetry_index(ref) == 0).all() and (asymmetry_index(jac) == 0).all()
    assert (asymmetry_index(res.fundamental) == 0).all()
    # a real off-diagonal part is untouched by the floor
    other = make_ot_mixture(NON_AFFINE, 2)
    res = fundamental_matrix(other, schedule, sample_prior(other, schedule, 8, seed=4), times, update="adjoint")
    torch.testing.assert_close(asymmetry_index(res.fundamental), asymmetry_index(res.fundamental, floor=0.0))
    assert asymmetry_index(res.fundamental).max() > 1e-3


def test_the_asymmetry_floor_is_a_config_key():
    assert validate_config({})["ot"]["asymmetry_floor"] == 1e-12
    with pytest.raises(ConfigError, match="ot.asymmetry_floor"):
        validate_config({"ot": {"asymmetry_floor": -1.0}})
