"""Protocol ``official`` (dfcore.ot_official): the authors' published Table 3 procedure, batched.

- one start, step by step, against a plain single-start loop of the published procedure written here;
- the DDIM grid against hand-copied diffusers values (and diffusers itself when installed);
- the coefficient table: VP, VE, EDM satisfy g^2 = d sigma^2/dt - 2 f sigma^2, subVP does not (its path is VP's);
- the 20-step means against an independent run of the published script;
- the protocols table and Table 3 with ``protocol: official``.
"""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.config import validate_config
from dfcore.data.ot_mixtures import make_ot_mixture
from dfcore.experiments.ot import run_table3
from dfcore.experiments.ot_protocols import COLUMNS, protocol_table, run_protocols
from dfcore.ot import asymmetry_index
from dfcore.ot_official import (
    OFFICIAL_SCHEDULES,
    OfficialSchedule,
    ddim_timesteps,
    official_fundamental,
    official_start,
    subvp_discount,
)

NON_AFFINE = {"kind": "dirac", "points": [[0.5, 0.0], [0.0, -0.5], [0.0, 0.0]]}
AFFINE = {"kind": "dirac", "points": [[0.0, 0.0], [0.0, 0.5], [0.0, -0.6]]}


def dirac(spec: dict) -> object:
    return make_ot_mixture(spec, 2).to(dtype=torch.float32)


def plain_published_loop(points: torch.Tensor, schedule: str, x: torch.Tensor, num_steps: int):
    """The published loop for one start, written out plainly: returns the states and A after every step."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    timesteps = [int(round(999 * k / (num_steps - 1))) for k in range(num_steps)][::-1]
    a_mat = torch.eye(2)
    states, mats = [x.clone()], [a_mat.clone()]
    for i in range(num_steps - 1):
        t, t_next = timesteps[i], timesteps[i + 1]
        dt = -torch.tensor(t - t_next, dtype=torch.float32) / 1000.0
        tt, ss = torch.tensor(t / 1000.0, dtype=torch.float32), torch.tensor(t_next / 1000.0, dtype=torch.float32)
        if schedule in ("VP", "subVP"):
            alpha_t, sigma_t = alphas_cumprod[t] ** 0.5, (1.0 - alphas_cumprod[t]) ** 0.5
            alpha_s, sigma_s = alphas_cumprod[t_next] ** 0.5, (1.0 - alphas_cumprod[t_next]) ** 0.5
            f_t = -0.5 * betas[t] * 1000
            g2_t = betas[t] * 1000
            if schedule == "subVP":  # b_0 = betas[-1] * 1000, b_1 = betas[0] * 1000, as in the script
                b_0, b_1 = betas[-1] * 1000, betas[0] * 1000
                g2_t = g2_t * (1.0 - torch.exp(-2 * b_0 * tt - (b_1 - b_0) * tt**2))
        elif schedule == "VE":
            alpha_t, sigma_t, alpha_s, sigma_s = 1.0, tt.sqrt(), 1.0, ss.sqrt()
            f_t, g2_t = 0.0, 1.0
        else:
            alpha_t, sigma_t, alpha_s, sigma_s = 1.0, tt, 1.0, ss
            f_t, g2_t = 0.0, 2 * tt
        v = torch.stack([torch.exp(-((x - alpha_t * y) ** 2).sum() / (2 * sigma_t**2)) for y in points])
        w = v / v.sum()
        y_theta = (w[:, None] * points).sum(0)
        second = sum(w[k] * torch.outer(points[k], points[k]) for k in range(len(points)))
        b_mat = (f_t - g2_t / (2 * sigma_t**2)) * torch.eye(2) + (alpha_t**2 * g2_t) / (2 * sigma_t**4) * (
            second - torch.outer(y_theta, y_theta)
        )
        a_mat = a_mat + b_mat @ a_mat * dt
        noise = (x - alpha_t * y_theta) / sigma_t
        x = (alpha_s / alpha_t) * x + (sigma_s - sigma_t * alpha_s / alpha_t) * noise
        states.append(x.clone())
        mats.append(a_mat.clone())
    return torch.stack(states), torch.stack(mats)


@pytest.mark.parametrize("schedule", OFFICIAL_SCHEDULES)
def test_one_start_step_by_step_against_the_published_loop(schedule):
    points = torch.tensor(NON_AFFINE["points"], dtype=torch.float32)
    x_start = official_start(16, 2, seed=3)
    res = official_fundamental(dirac(NON_AFFINE), OfficialSchedule(schedule), x_start, 20, keep=16)
    pick = int(asymmetry_index(res.fundamental).argmax())  # the start of the batch with the most asymmetric A
    states, mats = plain_published_loop(points, schedule, x_start[pick], 20)
    assert res.path.shape == (16, 20, 2) and res.fundamental_path.shape == (16, 20, 2, 2)
    for k in range(20):
        torch.testing.assert_close(res.path[pick, k], states[k], rtol=2e-5, atol=2e-6, msg=f"x at step {k}")
        scale = mats[k].abs().max()
        torch.testing.assert_close(
            res.fundamental_path[pick, k] / scale, mats[k] / scale, rtol=0, atol=1e-5, msg=f"A at step {k}"
        )
    assert asymmetry_index(res.fundamental[pick]).item() > 0.05  # a non-trivial case
    assert asymmetry_index(res.fundamental[pick]).item() == pytest.approx(asymmetry_index(mats[-1]).item(), rel=1e-4)


def test_ddim_grid():
    # DDIMScheduler(beta_start=0.00085, beta_end=0.012, 'scaled_linear', timestep_spacing='linspace').set_timesteps(20)
    expected = [999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158, 105, 53, 0]
    assert ddim_timesteps(20).tolist() == expected
    assert ddim_timesteps(1000).tolist() == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        ddim_timesteps(1)


def test_ddim_grid_and_table_equal_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        timestep_spacing="linspace",
        set_alpha_to_one=False,
    )
    for n in (20, 50, 100, 1000):
        sched.set_timesteps(n)
        assert ddim_timesteps(n).tolist() == sched.timesteps.tolist()
    vp = OfficialSchedule("VP")
    t = torch.arange(1000, dtype=torch.float32) / 1000.0
    torch.testing.assert_close(vp.alpha(t) ** 2, sched.alphas_cumprod, rtol=1e-6, atol=0)
    torch.testing.assert_close(vp.g2(t) / 1000, sched.betas, rtol=1e-6, atol=0)


def test_coefficient_table_consistency_and_the_subvp_mismatch():
    """g^2 = d sigma^2/dt - 2 f sigma^2: exact for VE and EDM, to O(1/T) for VP; subVP's g^2 is VP's times the discount."""
    t = torch.arange(1, 1000, dtype=torch.float64) / 1000.0
    for name in ("VE", "EDM"):
        s = OfficialSchedule(name)
        h = 1e-6
        dsig2 = (s.sigma(t + h) ** 2 - s.sigma(t - h) ** 2) / (2 * h)
        torch.testing.assert_close(s.g2(t), dsig2 - 2 * s.f(t) * s.sigma(t) ** 2, rtol=1e-6, atol=1e-9)
    vp, subvp = OfficialSchedule("VP"), OfficialSchedule("subVP")
    mid = t[1:-1]
    dsig2 = (vp.sigma(mid + 1e-3) ** 2 - vp.sigma(mid - 1e-3) ** 2) / 2e-3  # central difference on the table
    implied = dsig2 - 2 * vp.f(mid) * vp.sigma(mid) ** 2
    assert ((implied - vp.g2(mid)).abs() / vp.g2(mid)).max() < 0.02
    # subVP: same alpha, sigma, f as VP (so the same DDIM path), g^2 smaller by the discount factor
    torch.testing.assert_close(subvp.sigma(t), vp.sigma(t))
    torch.testing.assert_close(subvp.g2(t), vp.g2(t) * subvp_discount(t))
    assert subvp_discount(torch.tensor(0.053, dtype=torch.float64)).item() == pytest.approx(0.711, abs=2e-3)
    assert ((implied - subvp.g2(mid)).abs() / subvp.g2(mid)).max() > 0.5


def test_subvp_moves_the_states_as_vp_and_only_a_differs():
    x_start = official_start(64, 2, seed=0)
    vp = official_fundamental(dirac(NON_AFFINE), OfficialSchedule("VP"), x_start, 20)
    sub = official_fundamental(dirac(NON_AFFINE), OfficialSchedule("subVP"), x_start, 20)
    assert torch.equal(vp.x_end, sub.x_end)
    assert asymmetry_index(sub.fundamental).mean() < asymmetry_index(vp.fundamental).mean()


def test_affine_data_give_exactly_zero():
    for name in OFFICIAL_SCHEDULES:
        res = official_fundamental(dirac(AFFINE), OfficialSchedule(name), official_start(32, 2), 20)
        assert (asymmetry_index(res.fundamental) == 0).all()


# An independent run of the published OT/ot.py (its --num_inference_steps 20 --initial non-affine, 2,000 runs,
# on the CPU): mean and standard deviation of the per-run asymmetry index.
PUBLISHED_SCRIPT_20_STEPS = {
    "VE": (0.12184, 0.09986),
    "VP": (0.11281, 0.09855),
    "subVP": (0.09326, 0.08113),
    "EDM": (0.26283, 0.29846),
}


@pytest.mark.parametrize("schedule", OFFICIAL_SCHEDULES)
def test_20_step_mean_agrees_with_an_independent_run_of_the_published_script(schedule):
    n = 2000
    res = official_fundamental(dirac(NON_AFFINE), OfficialSchedule(schedule), official_start(n, 2, seed=11), 20)
    asym = asymmetry_index(res.fundamental).double()
    ref_mean, ref_sd = PUBLISHED_SCRIPT_20_STEPS[schedule]
    se = math.sqrt(asym.var().item() / n + ref_sd**2 / 2000)
    assert abs(asym.mean().item() - ref_mean) < 4 * se


def tiny_ot_config(**protocols) -> dict:
    cfg = validate_config({"ot": {"protocols": {"steps": [10, 20], "num_starts": [16, 8], **protocols}}})
    return cfg


def test_protocol_table_rows_and_columns(tmp_path):
    cfg = tiny_ot_config()
    table = run_protocols(
        cfg["ot"], cfg["schedules"], csv_path=tmp_path / "p.csv", plot_path=tmp_path / "p.png", progress=False
    )
    assert list(table.columns) == COLUMNS
    assert len(table) == 2 * 4 * 2 * 2
    assert set(table["protocol"]) == {"official", "ours"} and set(table["data"]) == {"affine", "non_affine"}
    assert table.groupby("num_steps")["num_starts"].first().to_dict() == {10: 16, 20: 8}
    affine = table[table["data"] == "affine"]
    assert (affine["asymmetry_mean"] < 1e-12).all()
    assert (table[table["data"] == "non_affine"]["asymmetry_mean"] > 1e-3).all()
    assert (tmp_path / "p.csv").exists() and (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="num_starts"):
        bad = tiny_ot_config(num_starts=[16])
        protocol_table(bad["ot"], bad["schedules"])


def test_table3_under_protocol_official(tmp_path):
    cfg = validate_config(
        {
            "ot": {
                "protocol": "official",
                "num_starts": 16,
                "num_steps": 20,
                "keep_paths": 2,
                "datasets": {"affine": AFFINE, "non_affine": NON_AFFINE},
            }
        }
    )
    out = {
        k: tmp_path / v
        for k, v in {
            "csv_path": "t.csv",
            "markdown_path": "t.md",
            "heatmap_path": "t.png",
            "fundamental_zarr": "f.zarr",
            "paths_zarr": "p.zarr",
        }.items()
    }
    table = run_table3(cfg["ot"], cfg["schedules"], device="cpu", progress=False, **out)
    assert set(table["protocol"]) == {"official"} and set(table["update"]) == {"euler"}
    direct = official_fundamental(dirac(NON_AFFINE), OfficialSchedule("VP"), official_start(16, 2, seed=1), 20)
    row = table[(table["schedule"] == "VP") & (table["dataset"] == "non_affine")].iloc[0]
    assert row["asym_mean"] == pytest.approx(asymmetry_index(direct.fundamental).mean().item(), rel=1e-6)
    assert (table[table["dataset"] == "affine"]["asym_mean"] == 0).all()
