"""Schedules: closed-form f and g² against autograd derivatives of alpha and sigma."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.schedules import (
    SCHEDULES,
    DiscreteSchedule,
    EDMSchedule,
    SubVPSchedule,
    VESchedule,
    VPSchedule,
    check_time,
    get_schedule,
)

T_GRID = torch.tensor([1e-4, 1e-3, 0.01, 0.1, 0.37, 0.5, 0.9, 1.0], dtype=torch.float64)


def _autograd_f_g2(schedule, t):
    t = t.clone().requires_grad_(True)
    log_alpha = torch.log(schedule.alpha(t)) + 0 * t  # keep a graph when alpha is constant
    var = schedule.sigma(t) ** 2
    (dlog_alpha,) = torch.autograd.grad(log_alpha.sum(), t)
    (dvar,) = torch.autograd.grad(var.sum(), t)
    f = dlog_alpha
    return f, dvar - 2 * f * var.detach()


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_f_and_g2_match_autograd(name):
    schedule = get_schedule(name)
    f_ref, g2_ref = _autograd_f_g2(schedule, T_GRID)
    torch.testing.assert_close(schedule.f(T_GRID), f_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(schedule.g2(T_GRID), g2_ref, rtol=1e-10, atol=1e-12)
    assert (schedule.g2(T_GRID) > 0).all()


def test_closed_forms_at_known_points():
    t = torch.tensor(0.5, dtype=torch.float64)
    ve = get_schedule("VE", sigma_min=0.01, sigma_max=50.0)
    assert math.isclose(ve.sigma(t).item(), 0.01 * 5000**0.5, rel_tol=1e-14)
    vp = get_schedule("VP")
    integral = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    assert math.isclose(vp.alpha(t).item(), math.exp(-0.5 * integral), rel_tol=1e-14)
    torch.testing.assert_close(vp.alpha(T_GRID) ** 2 + vp.sigma(T_GRID) ** 2, torch.ones_like(T_GRID))
    sub = get_schedule("subVP")
    assert math.isclose(sub.sigma(t).item(), 1 - math.exp(-integral), rel_tol=1e-14)
    edm = get_schedule("EDM")
    assert edm.sigma(t).item() == 40.0 and math.isclose(edm.t_min, 0.002 / 80)


def test_sigma_is_increasing_and_positive():
    for name in SCHEDULES:
        sigma = get_schedule(name).sigma(T_GRID)
        assert (sigma > 0).all() and (sigma.diff() > 0).all(), name


def test_schedule_keeps_dtype():
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([0.2, 0.7], dtype=dtype)
        for name in SCHEDULES:
            alpha, sigma = get_schedule(name)(t)
            assert alpha.dtype == dtype and sigma.dtype == dtype


def test_get_schedule_errors():
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        get_schedule("cosine")
    with pytest.raises(ValueError, match="bad parameters for schedule VE"):
        get_schedule("VE", beta_min=0.1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        get_schedule("VE", sigma_min=10.0, sigma_max=1.0)
    assert get_schedule("sub-vp").name == "subVP"


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_check_time_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match="t "):
        check_time(bad)


def test_discrete_schedule_matches_diffusers_table():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    table = scheduler.alphas_cumprod.to(torch.float64)
    schedule = DiscreteSchedule.from_scheduler(scheduler)
    n = table.numel()
    steps = torch.tensor([0, 1, 10, 500, n - 1])
    t = (steps + 1).to(torch.float64) / n
    torch.testing.assert_close(schedule.alpha(t), table[steps].sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.sigma(t), (1 - table[steps]).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.timestep(t), steps.to(torch.float64))
    # Between knots the derivatives are exact for the interpolant.
    t_mid = (torch.tensor([3, 100, 900]) + 0.5).to(torch.float64) / n
    f_ref, g2_ref = _autograd_f_g2(schedule, t_mid)
    torch.testing.assert_close(schedule.f(t_mid), f_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(schedule.g2(t_mid), g2_ref, rtol=1e-8, atol=1e-10)


def test_discrete_schedule_validates_table():
    with pytest.raises(ValueError, match="non-increasing"):
        DiscreteSchedule([0.5, 0.9])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        DiscreteSchedule([1.0, 0.5])
    with pytest.raises(ValueError, match="alphas_cumprod"):
        DiscreteSchedule.from_scheduler(object())


@pytest.mark.parametrize(
    "name, key",
    [("VE", "sigma_max"), ("VE", "sigma_min"), ("VP", "beta_max"), ("subVP", "beta_max"), ("EDM", "sigma_max")],
)
@pytest.mark.parametrize("value", [math.inf, math.nan, "large"])
def test_get_schedule_refuses_non_finite_parameters(name, key, value):
    """An infinite sigma_max or beta_max would give inf/NaN alpha and sigma at every t."""
    with pytest.raises(ValueError, match=f"{key}"):
        get_schedule(name, **{key: value})


@pytest.mark.parametrize(
    "a, b, equal",
    [
        (VPSchedule(), VPSchedule(0.1, 20.0), True),
        (VPSchedule(), VPSchedule(0.1, 19.0), False),
        (VPSchedule(), SubVPSchedule(), False),  # same parameters, another family
        (VESchedule(), EDMSchedule(0.01, 50.0), False),
        (VESchedule(), VESchedule(sigma_min=0.01, sigma_max=50), True),
        (DiscreteSchedule([0.9, 0.5]), DiscreteSchedule([0.9, 0.5]), True),
        (DiscreteSchedule([0.9, 0.5]), DiscreteSchedule([0.9, 0.4]), False),
    ],
)
def test_schedules_are_equal_when_family_and_parameters_agree(a, b, equal):
    assert (a == b) is equal and (a != b) is (not equal)
    if equal:
        assert hash(a) == hash(b) and len({a, b}) == 1
    assert a != "VP"


def test_a_schedule_rebuilds_from_its_spec():
    for schedule in (VPSchedule(0.2, 10.0), VESchedule(0.02, 40.0), SubVPSchedule(), EDMSchedule()):
        spec = schedule.spec()
        assert get_schedule(spec["name"], **spec["params"]) == schedule
