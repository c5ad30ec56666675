"""Trace estimators against the analytic trace, with the networks replaced by the exact ȳ and trace model
(so each formula is tested apart from training error), and against autograd for learned networks."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.fisher import (
    TRACE_ESTIMATORS,
    AnalyticTrace,
    HutchinsonTrace,
    TraceEstimator,
    fisher_trace,
    rademacher,
    trace_estimator,
    trace_estimator_from,
)
from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.models.base import ExactDenoiser, ExactTraceModel
from dfcore.models.networks import denoiser_from_state
from dfcore.sampling import CountingDenoiser
from dfcore.schedules import get_schedule

SCHEDULES = ["VE", "VP", "subVP", "EDM"]
TIMES = [1.0, 0.6, 0.3, 0.1, 0.02]


@pytest.fixture(scope="module")
def dirac():
    gen = torch.Generator().manual_seed(0)
    return DiracMixture(torch.randn(40, 3, generator=gen, dtype=torch.float64) * 1.5)


def _points(mixture, schedule, t, n=12, seed=1):
    gen = torch.Generator().manual_seed(seed)
    y = mixture.sample(n, generator=gen)
    alpha, sigma = schedule(torch.tensor(t, dtype=torch.float64))
    return alpha * y + sigma * torch.randn(y.shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t", TIMES)
def test_dftm_with_exact_models_equals_analytic(dirac, name, t):
    schedule = get_schedule(name)
    x = _points(dirac, schedule, t)
    truth = fisher_trace("analytic", x, t, schedule=schedule, mixture=dirac)
    est = fisher_trace(
        "dftm", x, t, denoiser=ExactDenoiser(dirac, schedule), trace_model=ExactTraceModel(dirac, schedule)
    )
    # Eq. 17 is a difference of O(d/sigma^2) terms; compare relative to that scale.
    scale = x.shape[1] / schedule.sigma(torch.tensor(t, dtype=torch.float64)) ** 2
    assert ((est - truth).abs() / scale).max() < 1e-10


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("t", [1.0, 0.3, 0.05])
def test_vjp_with_exact_denoiser_equals_analytic(dirac, name, t):
    schedule = get_schedule(name)
    x = _points(dirac, schedule, t)
    truth = fisher_trace("analytic", x, t, schedule=schedule, mixture=dirac)
    est = fisher_trace("vjp", x, t, denoiser=ExactDenoiser(dirac, schedule), chunk_size=2)
    scale = x.shape[1] / schedule.sigma(torch.tensor(t, dtype=torch.float64)) ** 2
    assert ((est - truth).abs() / scale).max() < 1e-9


def test_analytic_trace_matches_autograd_hessian_of_log_density():
    """Independent check of the ground truth itself: -tr of the autograd Hessian of log q_t."""
    gen = torch.Generator().manual_seed(2)
    mixture = GaussianMixture(
        torch.tensor([0.4, 0.6]),
        torch.randn(2, 3, generator=gen, dtype=torch.float64),
        torch.eye(3, dtype=torch.float64).expand(2, 3, 3) * torch.tensor([0.3, 0.8])[:, None, None],
    )
    schedule = get_schedule("VP")
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    t = 0.3
    hess = [torch.autograd.functional.hessian(lambda z: mixture.log_prob(z[None], t, schedule)[0], xi) for xi in x]
    truth = -torch.stack([h.trace() for h in hess])
    torch.testing.assert_close(fisher_trace("analytic", x, t, schedule=schedule, mixture=mixture), truth)
    torch.testing.assert_close(fisher_trace("vjp", x, t, denoiser=ExactDenoiser(mixture, schedule)), truth)


@pytest.mark.parametrize("t", [0.8, 0.2])
def test_hutchinson_is_unbiased_within_a_statistical_bound(dirac, t):
    schedule = get_schedule("VE")
    x = _points(dirac, schedule, t, n=4)
    truth = fisher_trace("analytic", x, t, schedule=schedule, mixture=dirac)
    den = ExactDenoiser(dirac, schedule)
    gen = torch.Generator().manual_seed(3)
    groups, per_group = 20, 25  # 500 probes; the spread of group means gives the standard error
    means = torch.stack(
        [fisher_trace("hutchinson", x, t, denoiser=den, num_probes=per_group, generator=gen) for _ in range(groups)]
    )
    mean, std = means.mean(0), means.std(0)
    assert ((mean - truth).abs() <= 5 * std / math.sqrt(groups) + 1e-9 * truth.abs()).all()
    # a nonzero off-diagonal makes single probes noisy: the test would catch a biased estimator, not a constant one
    assert (std > 0).any()


def test_hutchinson_with_fixed_probes_is_the_quadratic_form():
    torch.manual_seed(0)
    lin = torch.randn(3, 3, dtype=torch.float64)

    class Linear(ExactDenoiser):
        def __init__(self):
            self.schedule = get_schedule("VE")

        def eps(self, x, t):
            return x @ lin.T

    x = torch.randn(2, 3, dtype=torch.float64)
    z = torch.tensor([[[1.0, -1.0, 1.0]] * 2], dtype=torch.float64)
    sigma = get_schedule("VE").sigma(torch.tensor(0.5, dtype=torch.float64))
    est = fisher_trace("hutchinson", x, 0.5, denoiser=Linear(), probes=z)
    torch.testing.assert_close(est, (z[0] @ lin * z[0]).sum(1) / sigma)
    torch.testing.assert_close(fisher_trace("vjp", x, 0.5, denoiser=Linear()), lin.trace().expand(2) / sigma)


@pytest.mark.parametrize("arch", ["mlp", pytest.param("unet", marks=pytest.mark.slow)])
def test_vjp_of_a_network_equals_trace_of_its_autograd_jacobian(arch):
    hp = (
        {"dim": 2, "hidden": 16, "layers": 1, "fourier_levels": 2}
        if arch == "mlp"
        else {"dim": 16, "image_shape": [1, 4, 4], "block_out_channels": [8, 16], "norm_num_groups": 4}
    )
    torch.manual_seed(0)
    den = denoiser_from_state(
        {
            "kind": "denoiser",
            "arch": arch,
            "hparams": hp,
            "schedule": {"name": "VP", "params": {}},
            "prediction": "x0",
            "sigma_data": 0.7,
            "state_dict": None,
        }
    )
    x = torch.randn(2, hp["dim"])
    t = torch.tensor([0.2, 0.9])
    sigma = den.schedule.sigma(t.double())
    jac = [torch.autograd.functional.jacobian(lambda z: den.eps(z[None], ti[None])[0], xi) for xi, ti in zip(x, t)]
    truth = torch.stack([j.trace() for j in jac]).double() / sigma
    torch.testing.assert_close(fisher_trace("vjp", x, t, denoiser=den, chunk_size=16), truth, rtol=1e-4, atol=1e-4)


def test_registry_and_clear_errors(dirac):
    schedule = get_schedule("VE")
    x = _points(dirac, schedule, 0.5, n=2)
    den = ExactDenoiser(dirac, schedule)
    assert set(TRACE_ESTIMATORS) == {"analytic", "dftm", "vjp", "hutchinson"}
    assert all(issubclass(cls, TraceEstimator) for cls in TRACE_ESTIMATORS.values())
    with pytest.raises(ValueError, match="unknown trace method 'magic'"):
        fisher_trace("magic", x, 0.5, schedule=schedule)
    with pytest.raises(TypeError, match="mixture"):
        fisher_trace("analytic", x, 0.5, schedule=schedule)
    with pytest.raises(TypeError, match="trace_model"):
        fisher_trace("dftm", x, 0.5, denoiser=den)
    with pytest.raises(ValueError, match="num_probes must be positive"):
        HutchinsonTrace(den, num_probes=0)


def test_a_misspelt_or_foreign_keyword_is_a_type_error(dirac):
    schedule = get_schedule("VP")
    x = _points(dirac, schedule, 0.5, n=2)
    den = ExactDenoiser(dirac, schedule)
    with pytest.raises(TypeError, match="num_probe"):
        HutchinsonTrace(den, num_probe=2)
    with pytest.raises(TypeError, match="num_probes"):  # vjp takes no probes
        fisher_trace("vjp", x, 0.5, denoiser=den, num_probes=2)
    with pytest.raises(TypeError, match="denoiser"):  # the analytic trace has the exact mixture
        fisher_trace("analytic", x, 0.5, schedule=schedule, mixture=dirac, denoiser=den)
    # a keyword given as None counts as not given, so callers may pass every slot they hold
    torch.testing.assert_close(
        fisher_trace("vjp", x, 0.5, denoiser=den, trace_model=None), fisher_trace("vjp", x, 0.5, denoiser=den)
    )
    # the pool form takes, of the dependencies of every method, those the chosen one needs
    pool = {"schedule": schedule, "mixture": dirac, "denoiser": den, "num_probes": 3, "trace_model": None}
    assert isinstance(trace_estimator_from("analytic", pool), AnalyticTrace)
    assert trace_estimator_from("hutchinson", pool).num_probes == 3


@pytest.mark.parametrize("method", ["vjp", "hutchinson", "dftm", "analytic"])
def test_eps_and_trace_equals_eps_and_the_trace_apart(dirac, method):
    """eps_and_trace returns exactly the denoiser's eps and the estimator's own trace; vjp and hutchinson take eps
    from the forward pass of their VJPs (one denoiser call), the others call the denoiser once for it."""
    schedule = get_schedule("VP")
    x = _points(dirac, schedule, 0.4, n=5)
    t = torch.full((5,), 0.4, dtype=torch.float64)
    den = CountingDenoiser(ExactDenoiser(dirac, schedule))
    deps = {
        "vjp": dict(denoiser=den),
        "hutchinson": dict(denoiser=den, probes=rademacher((2, *x.shape), torch.Generator().manual_seed(3))),
        "dftm": dict(denoiser=den, trace_model=ExactTraceModel(dirac, schedule)),
        "analytic": dict(mixture=dirac, schedule=schedule),
    }[method]
    est = trace_estimator(method, **deps)
    eps, tr = est.eps_and_trace(x, t)
    assert torch.equal(tr, est(x, t))
    assert torch.equal(eps, est.denoiser.eps(x, t))
    den.reset()
    est.eps_and_trace(x, t)
    assert den.calls == {"vjp": 1, "hutchinson": 1, "dftm": 2, "analytic": 0}[method]


def test_frozen_hutchinson_keeps_its_probes(dirac):
    """Unfrozen, each call draws new probes from the generator; frozen(x) draws once, so every step of a solve
    sees the same z_j (and the estimate is Eq. 17's companion with those fixed probes)."""
    schedule = get_schedule("VP")
    x = _points(dirac, schedule, 0.4, n=4)
    est = HutchinsonTrace(ExactDenoiser(dirac, schedule), num_probes=2, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(est(x, 0.4), est(x, 0.4))
    frozen = est.frozen(x)
    assert frozen.probes is not None and frozen.probes.shape == (2, *x.shape)
    assert torch.equal(frozen(x, 0.4), frozen(x, 0.4))
    fixed = HutchinsonTrace(ExactDenoiser(dirac, schedule), probes=frozen.probes)
    assert torch.equal(fixed(x, 0.4), frozen(x, 0.4))


def test_dftm_shortcut_for_learned_trace_models_is_eq17():
    """For a LearnedTraceModel fisher_trace uses V = d t - ||ybar||^2 directly; check it against Eq. 17 computed
    from mean_sq_norm and posterior_mean (in float64, so the cancellation is harmless)."""
    from dfcore.models.networks import trace_model_from_state

    torch.manual_seed(0)
    state = {
        "kind": "denoiser",
        "arch": "mlp",
        "hparams": {"dim": 3, "hidden": 16, "layers": 1},
        "schedule": {"name": "VE", "params": {}},
        "prediction": "x0",
        "sigma_data": 1.0,
        "state_dict": None,
    }
    model = trace_model_from_state(
        {"kind": "trace", "share_trunk": True, "hparams": {"head_hidden": 8}, "denoiser": state, "state_dict": None}
    )
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    alpha, sigma = model.schedule(t)
    ybar = model.denoiser.posterior_mean(x, t)
    eq17 = 3 / sigma**2 - alpha**2 / sigma**4 * (3 * model.mean_sq_norm(x, t) - ybar.pow(2).sum(1))
    est = fisher_trace("dftm", x, t, denoiser=model.denoiser, trace_model=model)
    torch.testing.assert_close(est, eq17, rtol=1e-9, atol=0)


def test_schema_enums_come_from_the_registries():
    """The config schema lists no estimator names itself: full_schema() fills them from the registries, so a new
    registry entry is a valid config word at once; an unknown registry or exception is refused."""
    from dfcore.config import full_schema
    from dfcore.fisher import FVP_ESTIMATORS
    from dfcore.registries import fill_registry_enums

    props = full_schema()["properties"]
    assert props["nll"]["properties"]["runs"]["items"]["properties"]["method"]["enum"] == list(TRACE_ESTIMATORS)
    assert props["adjoint"]["properties"]["mixture"]["properties"]["methods"]["items"]["enum"] == list(FVP_ESTIMATORS)
    names = {"toys": ["a", "b", "c"]}
    schema = {"properties": {"k": {"x-registry": "toys", "x-registry-except": ["b"]}}}
    assert fill_registry_enums(schema, names) == {"properties": {"k": {"enum": ["a", "c"]}}}
    with pytest.raises(ValueError, match="unknown x-registry 'tools'"):
        fill_registry_enums({"x-registry": "tools"}, names)
    with pytest.raises(ValueError, match=r"\['z'\] are not in registry 'toys'"):
        fill_registry_enums({"x-registry": "toys", "x-registry-except": ["z"]}, names)


def test_required_dependencies_name_what_each_estimator_needs():
    from dfcore.registries import required_dependencies

    assert required_dependencies(AnalyticTrace) == ("mixture", "schedule")
    assert required_dependencies(TRACE_ESTIMATORS["dftm"]) == ("denoiser", "trace_model")
    assert required_dependencies(HutchinsonTrace) == ("denoiser",)


@pytest.mark.parametrize("arch", ["mlp", "unet"])
def test_dftm_with_a_shared_trunk_takes_eps_and_the_trace_from_one_pass(arch):
    """A head on the denoiser's own trunk: eps_and_trace gives the denoiser's eps and the estimator's trace (each
    computed apart) from one pass of the trunk, where computing them apart takes two; a trace net with a backbone
    of its own gives the same pair as apart."""
    from dfcore.models.base import TraceModel
    from dfcore.train import build_trace_model

    hp = (
        {"dim": 3, "hidden": 16, "layers": 1}
        if arch == "mlp"
        else {"dim": 16, "image_shape": [1, 4, 4], "block_out_channels": [8, 16], "norm_num_groups": 4}
    )
    torch.manual_seed(0)
    state = {"kind": "denoiser", "arch": arch, "hparams": hp, "schedule": {"name": "VP", "params": {}}}
    den = denoiser_from_state({**state, "prediction": "x0", "sigma_data": 0.7, "state_dict": None})
    x = torch.randn(4, hp["dim"])
    t = torch.tensor([0.01, 0.2, 0.5, 0.9], dtype=torch.float64)
    passes = []
    first_layer = den.module.inp if arch == "mlp" else den.module.unet
    first_layer.register_forward_hook(lambda *_: passes.append(1))
    backbone = {"hidden": 8, "layers": 1} if arch == "mlp" else {"block_out_channels": [4, 8]}
    for share_trunk in (True, False):
        model = build_trace_model(den, target="residual", share_trunk=share_trunk, head_hidden=8, backbone=backbone)
        est = trace_estimator("dftm", denoiser=den, trace_model=model)
        with torch.no_grad():
            apart = den.eps(x, t), est.trace(x, t)
        passes.clear()
        eps, tr = est.eps_and_trace(x, t)
        fused = len(passes)
        torch.testing.assert_close(eps, apart[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tr, apart[1], rtol=1e-9, atol=0)
        if share_trunk:
            passes.clear()
            TraceModel.eps_and_posterior_variance(model, x, t, den)
            assert (fused, len(passes)) == (1, 2)


@pytest.mark.parametrize("count", [1, 5])
@pytest.mark.parametrize("batched", [True, False])
def test_jacobian_quadratic_forms_match_explicit_jacobians(monkeypatch, count, batched):
    """The (K, B) forms <v_k, v_k^T J> of a per-sample nonlinear map equal those of its Jacobian from
    torch.autograd.functional.jacobian, for one cotangent, for chunks of two, and through the one-by-one
    fallback taken when the batched backward fails (forced here)."""
    from dfcore.fisher.common import output_and_jacobian_quadratic_forms

    gen = torch.Generator().manual_seed(4)
    w = torch.randn(5, 5, generator=gen, dtype=torch.float64)

    def fn(x):
        return torch.tanh(x @ w) * x

    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    vectors = torch.randn(count, 3, 5, generator=gen, dtype=torch.float64)
    if not batched:
        grad = torch.autograd.grad

        def unbatched(*args, is_grads_batched=False, **kwargs):
            if is_grads_batched:
                raise RuntimeError("no batching rule")
            return grad(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", unbatched)
    out, forms = output_and_jacobian_quadratic_forms(fn, x, vectors, chunk_size=2)
    torch.testing.assert_close(out, fn(x), rtol=0, atol=0)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda y: fn(y[None])[0], x[b])
        want = torch.einsum("ki,ij,kj->k", vectors[:, b], jac, vectors[:, b])
        torch.testing.assert_close(forms[:, b], want, rtol=1e-12, atol=1e-12)
