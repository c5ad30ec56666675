"""No silent wrong numbers: the mixtures' stored parameters under calls in other dtypes, half-precision inputs,
the extremes of t, a meta-device input, and the API edges that must be refused with a ValueError."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.schedules import get_schedule

SCHEDULES = ["VE", "VP", "subVP", "EDM"]


def _dirac() -> DiracMixture:
    gen = torch.Generator().manual_seed(3)
    return DiracMixture(torch.randn(40, 3, generator=gen, dtype=torch.float64) * 2.0 + 1.0)


def _gaussian() -> GaussianMixture:
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(3, 3, 3, generator=gen, dtype=torch.float64)
    covs = a @ a.transpose(1, 2) + 0.1 * torch.eye(3, dtype=torch.float64)
    means = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 3.0
    return GaussianMixture(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), means, covs)


MIXTURES = {"dirac": _dirac, "gaussian": _gaussian}

CALLS = {
    "log_prob": lambda m, x, t, s: m.log_prob(x, t, s),
    "score": lambda m, x, t, s: m.score(x, t, s),
    "posterior_mean": lambda m, x, t, s: m.posterior_mean(x, t, s),
    "posterior_variance": lambda m, x, t, s: m.posterior_variance(x, t, s),
    "fisher": lambda m, x, t, s: m.fisher(x, t, s),
    "fisher_trace": lambda m, x, t, s: m.fisher_trace(x, t, s),
    "fisher_vp": lambda m, x, t, s: m.fisher_vp(x, t, torch.ones_like(x), s),
}


def _x(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(9)
    return (torch.randn(5, 3, generator=gen, dtype=torch.float64) * 2.0).to(dtype)


def _stored(mixture) -> list[torch.Tensor]:
    if isinstance(mixture, DiracMixture):
        return [mixture._table.clone(), mixture.center.clone()]
    return [getattr(mixture, n).clone() for n in ("log_weights", "means", "covs", "evals", "evecs")]


# ------------------------------------------------------------------------------------------------------------- #
# precision


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_call_in_another_dtype_leaves_the_float64_results_and_the_stored_tables_unchanged(kind, dtype):
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x()
    before = {name: call(mixture, x, 0.3, schedule) for name, call in CALLS.items()}
    stored = _stored(mixture)
    for call in CALLS.values():
        call(mixture, x.to(dtype), 0.3, schedule)
    for old, new in zip(stored, _stored(mixture)):
        assert new.dtype == old.dtype and torch.equal(new, old)
    for name, call in CALLS.items():
        assert torch.equal(call(mixture, x, 0.3, schedule), before[name]), name


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_half_precision_inputs_give_the_float64_result_rounded_to_their_dtype(kind, dtype, name):
    """Half-precision x is computed in float64 and only the result is rounded: it equals the float64 result at the
    same (rounded) x, rounded to the input's dtype."""
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x(dtype)
    out = CALLS[name](mixture, x, 0.3, schedule)
    reference = CALLS[name](mixture, x.to(torch.float64), 0.3, schedule)
    assert out.dtype == dtype
    assert torch.equal(out, reference.to(dtype))


def test_a_half_precision_result_beyond_the_dtype_range_is_refused():
    """tr F ~ d / sigma^2 exceeds float16's 65504 at small t, and so does log q far out: an error, not inf."""
    schedule = get_schedule("VP")
    with pytest.raises(ValueError, match=r"DiracMixture.fisher_trace.*beyond the range of torch.float16"):
        _dirac().fisher_trace(_x(torch.float16), 1e-4, schedule)
    with pytest.raises(ValueError, match=r"GaussianMixture.log_prob.*beyond the range of torch.float16"):
        _gaussian().log_prob(torch.full((2, 3), 6e4, dtype=torch.float16), 0.01, schedule)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("schedule_name", SCHEDULES)
@pytest.mark.parametrize("t", [1e-300, 5e-324, 1.0])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_extreme_times_give_finite_results(kind, schedule_name, t, name):
    mixture, schedule = MIXTURES[kind](), get_schedule(schedule_name)
    out = CALLS[name](mixture, _x(), t, schedule)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("schedule_name", SCHEDULES)
def test_a_tiny_time_is_the_time_of_the_sigma_floor(kind, schedule_name):
    """Below the floor sigma_t = tiny ** (1/8) of the dtype every t gives the result of the floor itself, and the
    Dirac trace there is d / sigma^2 at a point of the data (the posterior sits on that point), sigma the larger
    of sigma_t and the floor."""
    mixture, schedule = MIXTURES[kind](), get_schedule(schedule_name)
    tiny_t = torch.tensor(1e-300, dtype=torch.float64)
    sigma = max(float(schedule.sigma(tiny_t)), torch.finfo(torch.float64).tiny ** 0.125)
    x = mixture.sample(4, torch.Generator().manual_seed(0)).to(torch.float64)
    if isinstance(mixture, DiracMixture):
        x = x * float(schedule.alpha(tiny_t))
        tr = mixture.fisher_trace(x, 1e-300, schedule)
        torch.testing.assert_close(tr, torch.full_like(tr, 3 / sigma**2), rtol=1e-12, atol=0)
    a, b = (mixture.fisher_trace(x, t, schedule) for t in (1e-300, 1e-200))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
def test_a_meta_device_input_is_refused_and_the_mixture_still_works(kind):
    mixture, schedule = MIXTURES[kind](), get_schedule("VP")
    x = _x()
    before = mixture.fisher_trace(x, 0.3, schedule)
    with pytest.raises(ValueError, match="meta"):
        mixture.fisher_trace(x.to("meta"), 0.3, schedule)
    assert torch.equal(mixture.fisher_trace(x, 0.3, schedule), before)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_sample_refuses_a_negative_or_non_integer_count(kind, n):
    with pytest.raises(ValueError, match="n must be"):
        MIXTURES[kind]().sample(n)


@pytest.mark.parametrize("kind", sorted(MIXTURES))
def test_sample_of_zero_is_empty(kind):
    assert MIXTURES[kind]().sample(0).shape == (0, 3)


def test_float32_results_are_unchanged_by_a_float64_call_in_between():
    mixture, schedule = _dirac(), get_schedule("VP")
    x = _x(torch.float32)
    first = mixture.fisher_trace(x, 0.2, schedule)
    mixture.fisher_trace(x.double(), 0.2, schedule)
    assert torch.equal(mixture.fisher_trace(x, 0.2, schedule), first)
    assert math.isfinite(float(first.sum()))
