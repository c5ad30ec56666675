"""The library on an accelerator (CUDA) against the same call on the CPU.

Every case below builds its inputs on the CPU in float64 from a fixed seed, rounds them to the dtype under test
and moves them to the device, so both devices see bit-identical inputs; it returns its outputs by name. A case
passes when each output stays on the device it was computed on, is finite, has the CPU's shape and dtype, and
lies within the case's relative tolerance of the CPU's (normwise: max |gpu - cpu| / max |cpu|).

* float64: 1e-10 everywhere (rounding is ~1e-16 per operation; the cases are chosen well conditioned, and
  :func:`test_low_precision_tolerances_cover_cpu_rounding` checks from the float32 run that the amplification of
  rounding error in each case keeps float64 far below the bar).
* float32 / float16: per case, next to each case's ``tolerances``. The reasoning is the same everywhere: a CPU and a
  GPU result each differ from exact arithmetic by about eps x (condition number) x (accumulation length), in
  different directions (other reduction orders, other kernels), so their difference is bounded by twice that. The
  tolerances are stated as a multiple of eps(dtype); :func:`test_low_precision_tolerances_cover_cpu_rounding`
  checks on the CPU that each is at least twice the CPU's own error against float64, so a GPU result that is
  as accurate as the CPU's passes and one that is not fails. TF32 is switched off for these comparisons
  (:func:`_ieee_float32`): float32 here means IEEE float32, whose eps the tolerances are written in.

The network cases use a random-weight MLP in float32; in float64 the exact denoiser and trace model of a Dirac
mixture take its place (see :func:`_networks`). The tiny Stable Diffusion pipeline runs in float64, float32 and
float16.

The CUDA comparisons carry the ``gpu`` marker and are skipped without CUDA (``make gpu-check`` runs them;
``DFCORE_GPU_DEVICE`` names another device than ``cuda``). The same cases and the same comparison helpers run on
the CPU in CI: the ``(cpu, cpu)`` pair, the tolerance check above, and tests that the helpers fail on a perturbed,
non-finite, misplaced or reshaped output (the tiny pipeline's CPU runs are ``slow``).

Set ``DFCORE_GPU_ERRORS_CSV`` to a file path to record every measured relative error (with the device name).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from dfcore.adjoint import autograd_adjoint, discrete_adjoint, guided_sample
from dfcore.fisher import fisher_trace, fisher_vp, trace_estimator_from
from dfcore.likelihood import gaussian_log_prior, log_likelihood
from dfcore.mixtures import DiracMixture, GaussianMixture
from dfcore.models.base import Denoiser, ExactDenoiser, ExactTraceModel, TraceModel
from dfcore.models.networks import trace_model_from_state
from dfcore.sampling import sample_trajectory
from dfcore.schedules import get_schedule
from dfcore.sde import time_grid

ACCELERATOR = os.environ.get("DFCORE_GPU_DEVICE", "cuda")
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device (make gpu-check runs these on a GPU)")
FLOAT64_TOLERANCE = 1e-10
CPU = torch.device("cpu")

Outputs = dict[str, Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# Comparison helpers


def relative_error(reference: Tensor, other: Tensor) -> float:
    """Normwise relative error ``max|other - reference| / max|reference|`` in float64 on the CPU (the plain
    maximum when the reference is zero)."""
    ref = reference.detach().to(CPU, torch.float64)
    out = other.detach().to(CPU, torch.float64)
    diff = (out - ref).abs().max().item() if ref.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def check_outputs(outputs: Outputs, device: torch.device | str) -> None:
    """Every output is a finite tensor on ``device`` (its type; ``cuda`` matches ``cuda:0``)."""
    want = torch.device(device).type
    for key, value in outputs.items():
        if not isinstance(value, Tensor):
            raise AssertionError(f"output {key!r} is a {type(value).__name__}, not a tensor")
        if value.device.type != want:
            raise AssertionError(f"output {key!r} is on {value.device}, computed for {device}")
        if not bool(torch.isfinite(value.detach()).all()):
            raise AssertionError(f"output {key!r} on {device} holds NaN or Inf")


def compare_outputs(
    reference: Outputs, result: Outputs, tolerance: float, device: torch.device | str
) -> dict[str, float]:
    """Raise AssertionError naming the first output of ``result`` (computed on ``device``) that is misplaced,
    non-finite, of another shape or dtype than ``reference``'s, or further than ``tolerance`` from it
    (:func:`relative_error`); return the relative error of each output."""
    if reference.keys() != result.keys():
        raise AssertionError(f"outputs differ: {sorted(reference)} against {sorted(result)}")
    check_outputs(result, device)
    errors = {}
    for key, ref in reference.items():
        out = result[key]
        if out.shape != ref.shape or out.dtype != ref.dtype:
            raise AssertionError(
                f"output {key!r}: {tuple(out.shape)} {out.dtype} on {device}, {tuple(ref.shape)} {ref.dtype} as reference"
            )
        errors[key] = relative_error(ref, out)
        if not errors[key] <= tolerance:
            raise AssertionError(
                f"output {key!r} on {device}: relative error {errors[key]:.3g} against the reference exceeds {tolerance:.3g}"
            )
    return errors


def inputs(seed: int, *shape: int) -> Tensor:
    """Standard normal float64 draws on the CPU from their own generator (the same on every device)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def on(value: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    return value.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Cases: (device, dtype) -> outputs


def _dirac_points() -> Tensor:
    return (torch.rand(300, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1) * 1.5


# Elements per chunk of the Dirac mixtures' running sums: small, so several passes of the running log-sum-exp (and
# the re-centring across chunks) run. :func:`reordered_sums` makes them smaller still: the same sums in another
# order, as a GPU's kernels would take them.
_CHUNK_ELEMENTS = [2**11]


@contextmanager
def reordered_sums() -> Iterator[None]:
    _CHUNK_ELEMENTS[0] = 2**7
    try:
        yield
    finally:
        _CHUNK_ELEMENTS[0] = 2**11


def _dirac(device: torch.device, dtype: torch.dtype, dim: int = 8, points: int = 300) -> DiracMixture:
    return DiracMixture(on(_dirac_points()[:points, :dim], device, dtype), chunk_elements=_CHUNK_ELEMENTS[0])


def _gaussian(device: torch.device, dtype: torch.dtype) -> GaussianMixture:
    gen = torch.Generator().manual_seed(1)
    factors = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) * 0.4
    covs = factors @ factors.transpose(1, 2) + 0.05 * torch.eye(4, dtype=torch.float64)
    means = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    return GaussianMixture(on(weights, device, dtype), on(means, device, dtype), on(covs, device, dtype))


def _mixture_outputs(mixture, x: Tensor, v: Tensor, t: Tensor | float) -> Outputs:
    schedule = get_schedule("VP")
    return {
        "log_prob": mixture.log_prob(x, t, schedule),
        "score": mixture.score(x, t, schedule),
        "fisher": mixture.fisher(x, t, schedule),
        "fisher_trace": mixture.fisher_trace(x, t, schedule),
        "fisher_vp": mixture.fisher_vp(x, t, v, schedule),
    }


def case_dirac_mixture(device: torch.device, dtype: torch.dtype) -> Outputs:
    mixture = _dirac(device, dtype)
    # points near the data at t = 0.3 (VP: alpha 0.81, sigma 0.58): the posterior spreads over a few points
    x = on(0.81 * _dirac_points()[:16] + 0.58 * inputs(2, 16, 8), device, dtype)
    t = on(torch.linspace(0.2, 0.5, 16, dtype=torch.float64), device, dtype)
    return _mixture_outputs(mixture, x, on(inputs(3, 16, 8), device, dtype), t)


def case_gaussian_mixture(device: torch.device, dtype: torch.dtype) -> Outputs:
    mixture = _gaussian(device, dtype)
    return _mixture_outputs(mixture, on(inputs(4, 16, 4), device, dtype), on(inputs(5, 16, 4), device, dtype), 0.3)


def case_mixture_sample(device: torch.device, dtype: torch.dtype) -> Outputs:
    """A mixture held on the device, sampled with a seeded CPU generator (how the data stages seed their draws)."""
    return {
        "dirac": _dirac(device, dtype).sample(32, generator=torch.Generator().manual_seed(6)),
        "gaussian": _gaussian(device, dtype).sample(32, generator=torch.Generator().manual_seed(7)),
    }


_MLP_IN_FLOAT64: list[bool] = [False]  # set by float64_mlp(): the float64 runs use the MLP, not the exact models


@contextmanager
def float64_mlp() -> Iterator[None]:
    """Within this block the float64 runs of the network cases use the float32 runs' MLP cast to float64 (CPU
    only: the reference that measures the float32 rounding error of the same network)."""
    _MLP_IN_FLOAT64[0] = True
    try:
        yield
    finally:
        _MLP_IN_FLOAT64[0] = False


def _cast_inputs(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    weight = next(module.parameters())
    return tuple(a.to(weight.dtype) for a in args)


def _networks(device: torch.device, dtype: torch.dtype, dim: int = 8) -> tuple[Denoiser, TraceModel]:
    """The denoiser and trace model of the estimator cases: a random-weight MLP denoiser (x0 prediction, VP) and a
    trace model sharing its trunk, built on the CPU from one seed and then moved, so both devices hold the same
    weights. The MLP's time embedding is float32 whatever the weights' dtype (so its float64 results differ
    between devices at float32's rounding), hence in float64 the exact denoiser and trace model of a Dirac
    mixture stand in for it, except within :func:`float64_mlp`, where the MLP runs in float64 with its time
    embedding cast up."""
    if dtype == torch.float64 and not _MLP_IN_FLOAT64[0]:
        mixture = _dirac(device, dtype, dim, points=64)
        schedule = get_schedule("VP")
        return ExactDenoiser(mixture, schedule), ExactTraceModel(mixture, schedule)
    state = {
        "kind": "denoiser",
        "arch": "mlp",
        "hparams": {"dim": dim, "hidden": 32, "layers": 2, "emb_dim": 16, "fourier_levels": 0},
        "schedule": {"name": "VP", "params": {}},
        "prediction": "x0",
        "sigma_data": 0.5,
        "state_dict": None,
    }
    torch.manual_seed(0)
    trace = trace_model_from_state(
        {"kind": "trace", "share_trunk": True, "hparams": {"head_hidden": 16, "emb_dim": 16}, "denoiser": state}
    )
    for module in (trace.denoiser.module, trace.module):
        module.to(device=device, dtype=dtype).requires_grad_(False)
        if dtype == torch.float64:
            for sub in module.modules():
                if isinstance(sub, torch.nn.Linear):
                    sub.register_forward_pre_hook(_cast_inputs)
    return trace.denoiser, trace


def case_trace_estimators(device: torch.device, dtype: torch.dtype) -> Outputs:
    den, trace = _networks(device, dtype)
    x = on(inputs(8, 12, 8), device, dtype)
    t = on(torch.linspace(0.1, 0.9, 12, dtype=torch.float64), device, dtype)
    mixture = _dirac(device, dtype)
    return {
        "analytic": fisher_trace("analytic", x, t, schedule=den.schedule, mixture=mixture),
        "dftm": fisher_trace("dftm", x, t, denoiser=den, trace_model=trace),
        "vjp": fisher_trace("vjp", x, t, denoiser=den, chunk_size=3),
        "hutchinson": fisher_trace(
            "hutchinson", x, t, denoiser=den, num_probes=4, generator=torch.Generator().manual_seed(9)
        ),
    }


def case_fisher_vp(device: torch.device, dtype: torch.dtype) -> Outputs:
    den, _ = _networks(device, dtype)
    x, v = on(inputs(10, 12, 8), device, dtype), on(inputs(11, 12, 8), device, dtype)
    x0, ybar = on(inputs(12, 12, 8), device, dtype), on(0.5 * inputs(13, 12, 8), device, dtype)
    t = on(torch.linspace(0.1, 0.9, 12, dtype=torch.float64), device, dtype)
    kw = dict(schedule=den.schedule, x0=x0, ybar=ybar)
    return {
        "analytic": fisher_vp("analytic", x, t, v, schedule=den.schedule, mixture=_dirac(device, dtype)),
        "dfea": fisher_vp("dfea", x, t, v, **kw),
        "dfea_centered": fisher_vp("dfea_centered", x, t, v, **kw),
        "vjp": fisher_vp("vjp", x, t, v, denoiser=den),
    }


def case_adjoint(device: torch.device, dtype: torch.dtype) -> Outputs:
    den, _ = _networks(device, dtype)
    times = time_grid(6, 1e-2, dtype=dtype).to(device)
    x_T = on(inputs(14, 4, 8), device, dtype)
    target = on(0.5 * inputs(15, 4, 8), device, dtype)

    def loss(x0: Tensor) -> Tensor:
        return 0.5 * (x0 - target).pow(2).sum(1)

    out: Outputs = {}
    for sampler in ("ddim", "heun"):
        traj = sample_trajectory(den, x_T, times, sampler)
        out[f"{sampler}_x_final"] = traj.x_final
        for method in ("dfea", "vjp"):
            out[f"{sampler}_lambda_{method}"] = discrete_adjoint(
                traj, traj.x_final - target, method, schedule=den.schedule, denoiser=den
            )[0]
    out["autograd_lambda"] = autograd_adjoint(den, x_T, times, loss)[0][0]
    gmm = _gaussian(device, dtype)
    exact = ExactDenoiser(gmm, den.schedule)
    x4 = on(inputs(16, 4, 4), device, dtype)
    traj = sample_trajectory(exact, x4, times)
    out["analytic_lambda"] = discrete_adjoint(traj, traj.x_final, "analytic", schedule=den.schedule, mixture=gmm)[0]
    for method in ("dfea", "vjp"):
        guided = guided_sample(
            den, x_T, times, loss, method=method, update_steps=(4, 2), step_size=0.1, normalize="none"
        )
        out[f"guided_{method}"] = guided.x_final
    return out


def _nll(method: str, device: torch.device, dtype: torch.dtype, **extra) -> Outputs:
    den, trace = _networks(device, dtype, dim=4)
    x = on(inputs(17, 4, 4), device, dtype)
    estimator = trace_estimator_from(
        method,
        {
            "schedule": den.schedule,
            "denoiser": None if method == "analytic" else den,
            "trace_model": trace,
            "mixture": _gaussian(device, dtype) if method == "analytic" else None,
            "num_probes": 2,
            "generator": torch.Generator().manual_seed(18),
        },
    )
    res = log_likelihood(
        x,
        estimator,
        log_prior=gaussian_log_prior(den.schedule, **extra),
        t_min=0.1,  # sigma 0.32: the exact Dirac denoiser of the float64 case stays smooth for 8 RK4 steps
        solver="rk4",
        num_steps=4,
    )
    return {f"{method}_{key}": getattr(res, key) for key in ("log_q", "prior", "delta", "x_T")}


def case_nll(device: torch.device, dtype: torch.dtype) -> Outputs:
    out: Outputs = {}
    for method in ("analytic", "dftm", "vjp", "hutchinson"):
        out |= _nll(method, device, dtype, var=0.5)
    return out


def case_nll_moment_prior(device: torch.device, dtype: torch.dtype) -> Outputs:
    """The NLL with the moment-matched prior (data mean and covariance), as the nll stage of the workflow
    calls it: the data's moments stay on the CPU, where the stage computes them."""
    data = inputs(19, 64, 4)
    return _nll("dftm", device, dtype, mean=data.mean(0), cov=torch.cov(data.T))


def case_tiny_sd(device: torch.device, dtype: torch.dtype, pipeline: Path) -> Outputs:
    """The tiny random Stable Diffusion pipeline (tests/fixtures/tiny_sd.py) loaded in ``dtype``: CFG ε, both
    Fisher-vector products, DF-TM and Hutchinson traces, DDIM latents, their NLL, decoded images and the
    adjoint-guided sample. Latents are float32 when the pipeline is float16 (the UNet casts them)."""
    from dfcore.integrations import diffusers as sd

    pipe = sd.load_pipeline(pipeline, device=device, dtype=dtype)
    den = sd.CFGDenoiser.from_pipeline(pipe, "a cat", 7.5)
    schedule = den.schedule
    xdtype = torch.float64 if dtype == torch.float64 else torch.float32
    z, v, x0 = (on(inputs(seed, 2, 4, 8, 8), device, xdtype) for seed in (20, 21, 22))
    t = torch.tensor([0.5, 0.3], dtype=torch.float64, device=device)
    trace_net = sd.build_latent_trace_model((4, 8, 8), sd.CFGDenoiser.from_pipeline(pipe, "", 1.0), 1.0, (8, 16), 1, 4)
    trace_net.module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    with torch.no_grad():
        ybar = den.posterior_mean(z, t)
    z0 = sd.sample_latents(den, z, 4)
    times = time_grid(4, 1.0 / schedule.num_steps, dtype=xdtype).to(device)
    guided = guided_sample(den, z, times, lambda y: y.pow(2).flatten(1).sum(1), method="vjp", update_steps=(2,))
    with torch.no_grad():
        images = sd.decode_latents(pipe, z0)
    return {
        "eps": den.eps(z, t),
        "fisher_vp_vjp": fisher_vp("vjp", z, t, v, denoiser=den),
        "fisher_vp_dfea": fisher_vp("dfea", z, t, v, schedule=schedule, x0=x0, ybar=ybar),
        "trace_dftm": fisher_trace("dftm", z, t, denoiser=den, trace_model=trace_net),
        "trace_hutchinson": fisher_trace(
            "hutchinson", z, t, denoiser=den, num_probes=2, generator=torch.Generator().manual_seed(23)
        ),
        "ddim_latents": z0,
        "nll": sd.latent_log_likelihood(z0, den, trace_net, num_steps=4).log_q,
        "images": images,
        "guided_vjp": guided.x_final,
    }


@dataclass(frozen=True)
class Case:
    """A case and its GPU-against-CPU relative tolerance per dtype (float64 is always 1e-10)."""

    run: Callable[..., Outputs]
    tolerances: dict[torch.dtype, float]
    needs_pipeline: bool = False


EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
EPS16 = torch.finfo(torch.float16).eps  # 9.8e-4

# Tolerances of float32 / float16 against the CPU in the same dtype, from the accumulation length and conditioning of
# each case (the CPU's own error against float64, measured on 2 x86 cores, is quoted for scale; the test below keeps
# every bar at least twice it).
CASES: dict[str, Case] = {
    # Logits -||x - a y||^2 / 2s^2 come from (B, d+2) x (d+2, N) products: sums of d + 2 = 10 terms of size up to
    # (|x| + a|y|)^2 / 2s^2 ~ 10 (t in [0.2, 0.5]), so ~1e2 eps absolute in each logit and in the softmax weights;
    # the Fisher's bracket (sum w y y^T - ybar ybar^T) loses up to another ~10 to cancellation: bar 1e3 eps = 1.2e-4
    # (CPU: 6 eps).
    "dirac_mixture": Case(case_dirac_mixture, {torch.float32: 1e3 * EPS32}),
    # Closed form in each component's eigenbasis (d = 4, K = 3): products of length 4, a log-sum-exp over 3, and
    # C_k = a^2 S_k + s^2 I with condition number ~10 (smallest eigenvalue ~0.1): ~40 eps; bar 1e2 eps = 1.2e-5
    # (CPU: 6 eps).
    "gaussian_mixture": Case(case_gaussian_mixture, {torch.float32: 1e2 * EPS32}),
    # float64 only: torch draws other normals in float32 than in float64, so no float32 reference exists.
    "mixture_sample": Case(case_mixture_sample, {}),
    # The MLP: 3 linear layers of width 32 (sums of 32 terms) and 2 layer norms, forward and (vjp, hutchinson) backward:
    # ~3 x 32 eps per pass at most; the trace sums 8 Jacobian diagonals against d/s^2 with mild cancellation (t up to
    # 0.9), x10; analytic runs in float64 on the float32-rounded inputs (identical on both devices). Bar 1e3 eps =
    # 1.2e-4 (CPU: 32 eps, from the analytic trace's rounded inputs).
    "trace_estimators": Case(case_trace_estimators, {torch.float32: 1e3 * EPS32}),
    # vjp as above; dfea / dfea_centered are two inner products of length 8; analytic as dirac_mixture. Bar 1e3 eps
    # (CPU: 1.3 eps).
    "fisher_vp": Case(case_fisher_vp, {torch.float32: 1e3 * EPS32}),
    # 6 DDIM / Heun steps of the MLP (~1e2 eps each, as above), each step's error carried by the following steps'
    # Jacobians (growth up to ~3 per step near t_min = 0.01, where the adjoint's a^2/s^4 term is largest), and the
    # guided samples run the chain twice more: ~1e3 eps; bar 1e4 eps = 1.2e-3 (CPU: 24 eps).
    "adjoint": Case(case_adjoint, {torch.float32: 1e4 * EPS32}),
    # 4 RK4 steps (16 evaluations) of the float32 MLP inside a float64 ODE: each evaluation's ~1e2 eps enters the
    # state and the trace integral, a sum of 16 terms of one sign (no cancellation): bar 1e3 eps = 1.2e-4
    # (CPU: 1.4 eps).
    "nll": Case(case_nll, {torch.float32: 1e3 * EPS32}),
    "nll_moment_prior": Case(case_nll_moment_prior, {torch.float32: 1e3 * EPS32}),
    # The tiny UNet: 2 resolution levels, 3x3 convolutions over 8-16 channels (sums of 72-144 terms), group norms and
    # cross-attention over 16 tokens, ~10 layers deep: ~1e2 eps per call; classifier-free guidance with w = 7.5 takes
    # eps_u + 7.5 (eps_c - eps_u), which multiplies the relative error by |7.5 (eps_c - eps_u)| / |eps| (~5); the
    # vjp runs the chain backwards, 4 DDIM steps and the NLL's 16 evaluations carry it on. float32: bar 1e4 eps =
    # 1.2e-3 (CPU: 73 eps). float16 (eps 9.8e-4; the latents and the ODE stay float32/float64): the same chain, bar
    # 100 eps = 0.098 (CPU: 15 eps).
    "tiny_sd": Case(case_tiny_sd, {torch.float32: 1e4 * EPS32, torch.float16: 100 * EPS16}, needs_pipeline=True),
}


def tolerance(name: str, dtype: torch.dtype) -> float:
    return FLOAT64_TOLERANCE if dtype == torch.float64 else CASES[name].tolerances[dtype]


def evaluate(name: str, device: torch.device | str, dtype: torch.dtype, pipeline: Path | None = None) -> Outputs:
    """Run case ``name`` on ``device`` in ``dtype``."""
    case = CASES[name]
    device = torch.device(device)
    if case.needs_pipeline:
        if pipeline is None:
            raise ValueError(f"case {name!r} needs the tiny pipeline folder (pipeline=)")
        return case.run(device, dtype, pipeline)
    return case.run(device, dtype)


PAIRS = [(name, dtype) for name, case in CASES.items() for dtype in (torch.float64, *case.tolerances)]
LOW_PRECISION = [(name, dtype) for name, case in CASES.items() for dtype in case.tolerances]
# On the CPU the tiny pipeline's cases take ~40 s (building it, ~5 s a run): `slow` there; on the GPU they always run.
CPU_SLOW = {"tiny_sd"}


def _cpu_params(pairs: list[tuple[str, torch.dtype]]) -> list:
    return [
        pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}", marks=[pytest.mark.slow] if name in CPU_SLOW else [])
        for name, dtype in pairs
    ]


# ---------------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from fixtures.tiny_sd import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("gpu_sd") / "pipeline")


def _pipeline_for(name: str, request) -> Path | None:
    return request.getfixturevalue("tiny_pipeline") if CASES[name].needs_pipeline else None


@pytest.fixture(autouse=True)
def _ieee_float32() -> Iterator[None]:
    """float32 products and convolutions in IEEE float32 (no TF32), restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def error_log() -> Iterator[list[dict]]:
    """Rows (case, dtype, output, relative error, tolerance, device) written to ``$DFCORE_GPU_ERRORS_CSV`` if set."""
    rows: list[dict] = []
    yield rows
    path = os.environ.get("DFCORE_GPU_ERRORS_CSV")
    if path and rows:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(path).with_suffix(".tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(path)


def _device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ---------------------------------------------------------------------------------------------------------------------
# On the accelerator


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("name", "dtype"), PAIRS, ids=[f"{n}-{str(d)[6:]}" for n, d in PAIRS])
def test_accelerator_matches_cpu(name, dtype, request, error_log):
    pipeline = _pipeline_for(name, request)
    reference = evaluate(name, CPU, dtype, pipeline)
    check_outputs(reference, CPU)
    result = evaluate(name, ACCELERATOR, dtype, pipeline)
    try:
        errors = compare_outputs(reference, result, tolerance(name, dtype), ACCELERATOR)
    finally:
        for key, ref in reference.items():
            if key in result and result[key].shape == ref.shape:
                error_log.append(
                    {
                        "case": name,
                        "dtype": str(dtype).replace("torch.", ""),
                        "output": key,
                        "relative_error": relative_error(ref, result[key]),
                        "tolerance": tolerance(name, dtype),
                        "device": _device_name(ACCELERATOR),
                    }
                )
    assert set(errors) == set(reference)


# ---------------------------------------------------------------------------------------------------------------------
# The same cases and helpers on the CPU (CI)


@pytest.mark.parametrize(("name", "dtype"), _cpu_params([(name, torch.float64) for name in CASES]))
def test_cpu_pair_agrees_with_the_sums_reordered(name, dtype, request):
    """The (cpu, cpu) pair in float64, the second run with the Dirac mixtures' sums taken in other chunks (what
    another device's kernels do): every case runs, gives finite outputs on the CPU, and stays within a tenth of
    the 1e-10 bar, so the bar leaves room for the GPU's reduction orders. A case with an unseeded draw fails here
    (and would fail on the GPU for the wrong reason)."""
    pipeline = _pipeline_for(name, request)
    first = evaluate(name, CPU, dtype, pipeline)
    with reordered_sums():
        second = evaluate(name, CPU, dtype, pipeline)
    errors = compare_outputs(first, second, FLOAT64_TOLERANCE / 10, CPU)
    assert set(errors) == set(first)


@pytest.mark.parametrize(("name", "dtype"), _cpu_params(LOW_PRECISION))
def test_low_precision_tolerances_cover_cpu_rounding(name, dtype, request):
    """Each float32/float16 tolerance is at least twice the CPU's own error against float64 (so a GPU result as
    accurate as the CPU's passes); from the float32 error, the case's amplification of rounding error
    (error / eps) puts its float64 error at least 10x below the 1e-10 bar."""
    pipeline = _pipeline_for(name, request)
    with float64_mlp():
        exact = evaluate(name, CPU, torch.float64, pipeline)
    low = evaluate(name, CPU, dtype, pipeline)
    check_outputs(low, CPU)
    bar = tolerance(name, dtype)
    for key, ref in exact.items():
        err = relative_error(ref, low[key])
        assert err <= bar / 2, f"{name}/{key} in {dtype} on the CPU: error {err:.3g} > half the tolerance {bar:.3g}"
        if dtype == torch.float32:
            amplification = err / EPS32
            assert amplification * torch.finfo(torch.float64).eps <= FLOAT64_TOLERANCE / 10, (name, key, err)


def test_compare_outputs_fails_on_a_perturbed_output():
    reference = case_fisher_vp(CPU, torch.float64)
    result = {key: value.clone() for key, value in reference.items()}
    assert compare_outputs(reference, result, FLOAT64_TOLERANCE, CPU) == dict.fromkeys(reference, 0.0)
    scale = result["vjp"].abs().max()
    result["vjp"][3, 5] += 1e-9 * scale  # relative error 1e-9 > 1e-10
    with pytest.raises(AssertionError, match=r"'vjp' on cpu: relative error 1e-09"):
        compare_outputs(reference, result, FLOAT64_TOLERANCE, CPU)
    result["vjp"][3, 5] -= 1e-9 * scale - 1e-11 * scale  # 1e-11: within the bar
    assert compare_outputs(reference, result, FLOAT64_TOLERANCE, CPU)["vjp"] == pytest.approx(1e-11, rel=1e-3)


def test_compare_outputs_fails_on_nan_device_shape_dtype_and_keys():
    reference = {"a": torch.ones(3, dtype=torch.float64), "b": torch.zeros(2, 2, dtype=torch.float64)}
    with pytest.raises(AssertionError, match="'a' on cpu holds NaN"):
        compare_outputs(
            reference, {"a": torch.tensor([1.0, math.nan, 1.0], dtype=torch.float64), "b": reference["b"]}, 1, CPU
        )
    with pytest.raises(AssertionError, match="'a' is on cpu, computed for cuda"):
        compare_outputs(reference, reference, 1.0, "cuda")  # a result that silently stayed on the CPU
    with pytest.raises(AssertionError, match=r"'b': \(4,\)"):
        compare_outputs(reference, {"a": reference["a"], "b": torch.zeros(4, dtype=torch.float64)}, 1.0, CPU)
    with pytest.raises(AssertionError, match="'a': .*torch.float32"):
        compare_outputs(reference, {"a": reference["a"].float(), "b": reference["b"]}, 1.0, CPU)
    with pytest.raises(AssertionError, match="outputs differ"):
        compare_outputs(reference, {"a": reference["a"]}, 1.0, CPU)
    # a zero reference: the absolute difference counts
    assert relative_error(reference["b"], reference["b"] + 1e-3) == pytest.approx(1e-3)


def test_every_public_estimator_is_covered():
    """The cases cover every trace method and every Fisher-vector product of dfcore.fisher."""
    from dfcore.fisher.trace import TRACE_ESTIMATORS
    from dfcore.fisher.vp import FVP_ESTIMATORS

    assert set(case_trace_estimators(CPU, torch.float64)) == set(TRACE_ESTIMATORS)
    assert set(case_fisher_vp(CPU, torch.float64)) == set(FVP_ESTIMATORS)
