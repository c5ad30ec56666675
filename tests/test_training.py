"""Training: seed => bit-identical weights; an interrupted run resumes to exactly the weights of an
uninterrupted one (denoiser and trace network, shared or separate trunk); the learning-rate schedule; the
calibration of a trace net along the likelihood's paths (after it, the net's mean posterior variance over the
calibration states equals the mean of the denoiser's exact divergence there, from autograd Jacobians)."""

from __future__ import annotations

import pytest
import torch

from dfcore.calibration import calibrate_along_paths
from dfcore.config import dataset_section
from dfcore.data.datasets import make_checkerboard
from dfcore.experiments.train import train_denoiser, train_trace
from dfcore.io import load_checkpoint
from dfcore.models.networks import load_denoiser, load_trace_model, trace_model_from_state
from dfcore.models.trace_output import offset_at
from dfcore.paths import likelihood_path_states
from dfcore.schedules import get_schedule
from dfcore.train import learning_rate

CFG = {
    "arch": "auto",
    "share_trunk": True,
    "head_hidden": 128,
    "backbone": {},
    "target": "residual",
    "ema_decay": 0.0,
    "divergence_probes": 1,
    "divergence_exact_max_dim": 16,
    "parameterization": "variance",
    "t_min": 1e-3,
    "time_power": 1.0,
    "steps": 30,
    "batch_size": 32,
    "lr": 3e-3,
    "warmup_steps": 5,
    "checkpoint_every": 10,
    "prediction": "x0",
    "mlp": {"hidden": 16, "layers": 1, "emb_dim": 8, "fourier_levels": 2},
}


class Interrupt(Exception):
    pass


def _weights(path, kind="denoiser"):
    model = load_denoiser(path) if kind == "denoiser" else load_trace_model(path)
    return {k: v.clone() for k, v in model.module.state_dict().items()}


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def data():
    return make_checkerboard(64, seed=0)


def test_same_seed_gives_bit_identical_weights(tmp_path, data):
    sched = get_schedule("VE")
    train_denoiser(data, sched, CFG, tmp_path / "a.pt", seed=1, device="cpu", progress=False)
    train_denoiser(data, sched, CFG, tmp_path / "b.pt", seed=1, device="cpu", progress=False)
    train_denoiser(data, sched, CFG, tmp_path / "c.pt", seed=2, device="cpu", progress=False)
    assert _equal(_weights(tmp_path / "a.pt"), _weights(tmp_path / "b.pt"))
    assert not _equal(_weights(tmp_path / "a.pt"), _weights(tmp_path / "c.pt"))


@pytest.mark.parametrize("stop_at", [17])
def test_interrupted_denoiser_training_resumes_to_the_same_weights(tmp_path, data, stop_at):
    sched = get_schedule("VP")
    train_denoiser(
        data, sched, CFG, tmp_path / "full.pt", seed=3, device="cpu", progress=False, loss_csv=tmp_path / "full.csv"
    )

    def crash(step):
        if step == stop_at:
            raise Interrupt

    resume = tmp_path / "resume.pt"
    with pytest.raises(Interrupt):
        train_denoiser(
            data,
            sched,
            CFG,
            tmp_path / "part.pt",
            seed=3,
            device="cpu",
            progress=False,
            resume_path=resume,
            on_step=crash,
        )
    assert not (tmp_path / "part.pt").exists()
    assert load_checkpoint(resume)["step"] == 10  # the last checkpoint before the crash
    train_denoiser(
        data,
        sched,
        CFG,
        tmp_path / "part.pt",
        seed=3,
        device="cpu",
        progress=False,
        resume_path=resume,
        loss_csv=tmp_path / "part.csv",
    )
    assert _equal(_weights(tmp_path / "full.pt"), _weights(tmp_path / "part.pt"))
    assert (tmp_path / "full.csv").read_text() == (tmp_path / "part.csv").read_text()  # no step lost or repeated
    assert not resume.exists()  # removed once the run completed


def test_a_resume_checkpoint_from_other_settings_is_ignored(tmp_path, data):
    sched = get_schedule("VE")
    resume = tmp_path / "resume.pt"

    def crash(step):
        if step == 15:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_denoiser(
            data, sched, CFG, tmp_path / "x.pt", seed=5, device="cpu", progress=False, resume_path=resume, on_step=crash
        )
    other = {**CFG, "lr": 1e-3}
    train_denoiser(data, sched, other, tmp_path / "fresh.pt", seed=5, device="cpu", progress=False)
    train_denoiser(
        data, sched, other, tmp_path / "resumed.pt", seed=5, device="cpu", progress=False, resume_path=resume
    )
    assert _equal(_weights(tmp_path / "fresh.pt"), _weights(tmp_path / "resumed.pt"))


@pytest.mark.parametrize("share", [True, False])
def test_interrupted_trace_training_resumes_to_the_same_weights(tmp_path, data, share):
    sched = get_schedule("VE")
    den = train_denoiser(data, sched, {**CFG, "steps": 10}, tmp_path / "den.pt", seed=0, device="cpu", progress=False)
    cfg = {**CFG, "share_trunk": share, "head_hidden": 8, "steps": 20}
    train_trace(data, den, cfg, tmp_path / "full.pt", seed=4, progress=False)

    def crash(step):
        if step == 13:
            raise Interrupt

    den = load_denoiser(tmp_path / "den.pt")
    with pytest.raises(Interrupt):
        train_trace(
            data, den, cfg, tmp_path / "part.pt", seed=4, progress=False, resume_path=tmp_path / "r.pt", on_step=crash
        )
    den = load_denoiser(tmp_path / "den.pt")
    train_trace(data, den, cfg, tmp_path / "part.pt", seed=4, progress=False, resume_path=tmp_path / "r.pt")
    assert _equal(_weights(tmp_path / "full.pt", "trace"), _weights(tmp_path / "part.pt", "trace"))


def test_learning_rate_warmup_then_cosine():
    assert learning_rate(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert learning_rate(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert learning_rate(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert learning_rate(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert learning_rate(100, 100, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


def test_per_dataset_overrides_are_merged():
    section = {
        "steps": 10,
        "mlp": {"hidden": 8, "layers": 2},
        "overrides": {"digits": {"steps": 3, "mlp": {"hidden": 4}}},
    }
    assert dataset_section(section, "digits") == {"steps": 3, "mlp": {"hidden": 4, "layers": 2}}
    assert dataset_section(section, "board") == {"steps": 10, "mlp": {"hidden": 8, "layers": 2}}


def test_time_power_draws_training_times_towards_t_min(data):
    """time_power p: t = t_min + (1 - t_min) u^p; the recorded training times have the law of u^p
    (P(t <= t_min + (1 - t_min) q) = q^(1/p)), checked against the empirical fraction."""
    seen = []

    class Probe:
        module = torch.nn.Linear(1, 1)

        def loss(self, x0, t, noise):
            seen.append(t.detach().clone())
            return self.module.weight.sum() * 0.0

        def state(self):
            return {}

    for power in (1.0, 3.0):
        seen.clear()
        from dfcore.train import train_loop

        train_loop(Probe(), data, steps=20, batch_size=500, lr=1e-3, t_min=0.01, time_power=power, progress=False)
        u = ((torch.cat(seen) - 0.01) / 0.99).clamp(0, 1)
        for q in (0.1, 0.5):
            assert abs((u <= q).double().mean().item() - q ** (1 / power)) < 0.02
    with pytest.raises(ValueError, match="time_power"):
        train_loop(Probe(), data, steps=1, batch_size=2, lr=1e-3, time_power=0.0, progress=False)


def test_dataset_posterior_training_needs_and_uses_the_training_set(tmp_path, data):
    sched = get_schedule("VE")
    den = train_denoiser(data, sched, {**CFG, "steps": 5}, tmp_path / "den.pt", seed=0, device="cpu", progress=False)
    cfg = {**CFG, "share_trunk": False, "head_hidden": 8, "steps": 5, "target": "dataset_posterior", "time_power": 2.0}
    model = train_trace(data, den, cfg, tmp_path / "trace.pt", seed=0, progress=False)
    assert model.reference.num_points == len(data)
    assert load_trace_model(tmp_path / "trace.pt").target == "dataset_posterior"
    from dfcore.train import build_trace_model

    with pytest.raises(ValueError, match="dataset_posterior"):
        build_trace_model(den, target="dataset_posterior", share_trunk=False, head_hidden=8)


class Poisoned:
    """A linear model whose loss turns non-finite at step ``at`` (1-based): ``how`` = ``loss`` gives a
    NaN loss, ``gradient`` a finite loss with NaN gradients."""

    def __init__(self, at: int, how: str):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(2, 2)
        self.at, self.how, self.calls = at, how, 0

    def loss(self, x0, t, noise):
        self.calls += 1
        value = (self.module(x0 + noise) - x0).pow(2).mean()
        if self.calls >= self.at and self.how == "loss":
            return value * float("nan")
        if self.calls >= self.at and self.how == "gradient":
            u = self.module.weight.sum() - self.module.weight.sum().detach()  # 0, with gradient 1
            return value + u.abs().sqrt()  # adds 0 to the loss and NaN to the gradient
        return value

    def state(self):
        return {"state_dict": self.module.state_dict()}


@pytest.mark.parametrize("how, at", [("loss", 17), ("gradient", 20)])
def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, data, how, at):
    """Checkpoints every 10 steps: the step that goes wrong is named, and the resume checkpoint stays
    the one of step 10, with finite parameters (at step 20 no checkpoint is written from NaN)."""
    from dfcore.train import train_loop

    resume = tmp_path / "resume.pt"
    with pytest.raises(
        FloatingPointError, match=rf"^probe: non-finite {how}.* at step {at} of 30;.*resume\.pt \(step 10\)"
    ):
        train_loop(
            Poisoned(at, how),
            data,
            steps=30,
            batch_size=8,
            lr=1e-2,
            checkpoint_every=10,
            resume_path=resume,
            progress=False,
            desc="probe",
        )
    ckpt = load_checkpoint(resume)
    assert ckpt["step"] == 10 and len(ckpt["losses"]) == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"]["state_dict"].values())


def test_training_on_data_with_nan_stops_and_writes_no_model(tmp_path, data):
    bad = data.clone()
    bad[:, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 1 of 30"):
        train_denoiser(
            bad,
            get_schedule("VE"),
            CFG,
            tmp_path / "model.pt",
            seed=0,
            device="cpu",
            progress=False,
            loss_csv=tmp_path / "loss.csv",
        )
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "loss.csv").exists()


def test_parameters_that_turn_non_finite_without_clipping_are_never_saved(tmp_path, data):
    """With ``grad_clip = 0`` no gradient norm is computed; the parameters are checked before each save."""
    from dfcore.train import train_loop

    resume = tmp_path / "resume.pt"
    with pytest.raises(FloatingPointError, match=r"non-finite (loss|parameters).* at step (20|21) of 30"):
        train_loop(
            Poisoned(20, "gradient"),
            data,
            steps=30,
            batch_size=8,
            lr=1e-2,
            checkpoint_every=10,
            resume_path=resume,
            grad_clip=0.0,
            progress=False,
            desc="probe",
        )
    assert load_checkpoint(resume)["step"] == 10


def test_checkpoints_name_their_data_set_and_another_data_set_is_refused(tmp_path):
    """run_training records the store's data set in the checkpoint; a trace net trained on it, or its denoiser,
    is refused by the nll stage of another data set (naming the file and both names)."""
    from dfcore.experiments.data import prepare_dataset
    from dfcore.experiments.nll import run_nll
    from dfcore.experiments.train import run_training

    spec = {"kind": "checkerboard", "num_samples": 64, "seed": 1}
    prepare_dataset("board", spec, tmp_path / "board.zarr")
    prepare_dataset("other", {**spec, "seed": 2}, tmp_path / "other.zarr")
    den_path, trace_path = tmp_path / "den.pt", tmp_path / "trace.pt"
    cfg = {**CFG, "steps": 4, "checkpoint_every": 2, "seed": 0}
    run_training("denoiser", cfg, tmp_path / "board.zarr", den_path, schedule=get_schedule("VE"), progress=False)
    run_training("trace", cfg, tmp_path / "board.zarr", trace_path, denoiser_path=den_path, progress=False)
    assert load_checkpoint(den_path)["record"]["dataset"] == "board"
    assert load_checkpoint(trace_path)["record"]["dataset"] == "board"
    with pytest.raises(ValueError, match=r"den\.pt: dataset is 'board', but 'other' is expected"):
        run_training("trace", cfg, tmp_path / "other.zarr", tmp_path / "t2.pt", denoiser_path=den_path, progress=False)
    section = {"num_points": 2, "num_probes": 1, "t_min": 1e-3, "solver": "rk4", "num_steps": 2, "seed": 0}
    with pytest.raises(ValueError, match=r"trace\.pt: dataset is 'board', but 'other' is expected"):
        run_nll(
            section,
            tmp_path / "other.zarr",
            tmp_path / "nll.csv",
            dataset="other",
            schedule_name="VE",
            schedule=get_schedule("VE"),
            method="dftm",
            device="cpu",
            trace_path=trace_path,
        )


class Linear:
    """A linear model on x0 + noise, for tests of the loop itself."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(2, 2)

    def loss(self, x0, t, noise):
        return (self.module(x0 + noise) - x0).pow(2).mean()

    def state(self):
        return {"state_dict": self.module.state_dict()}


def test_ema_weights_are_the_moving_average_of_the_trajectory(data):
    """ema_decay = 0.8: the final weights are e_n with e_1 = W_1 and e_k = 0.8 e_(k-1) + 0.2 W_k over the
    iterates W_k, recomputed here in float64, and not the last iterate."""
    from dfcore.train import train_loop

    model, trajectory = Linear(), []

    def record(step):
        trajectory.append([p.detach().double().clone() for p in model.module.parameters()])

    train_loop(model, data, steps=12, batch_size=8, lr=5e-2, ema_decay=0.8, on_step=record, progress=False)
    ema = trajectory[0]
    for weights in trajectory[1:]:
        ema = [0.8 * e + 0.2 * w for e, w in zip(ema, weights)]
    final = [p.detach().double() for p in model.module.parameters()]
    for got, want, last in zip(final, ema, trajectory[-1]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert (got - last).abs().max() > 1e-4
    with pytest.raises(ValueError, match="ema_decay"):
        train_loop(Linear(), data, steps=1, batch_size=2, lr=1e-3, ema_decay=1.0, progress=False)


def test_interrupted_trace_training_with_ema_resumes_to_the_same_average(tmp_path, data):
    """The moving average is part of the resume checkpoint: an interrupted run with ema_decay ends with the saved
    weights of an uninterrupted one, and those differ from the run without the average."""
    sched = get_schedule("VE")
    den = train_denoiser(data, sched, {**CFG, "steps": 10}, tmp_path / "den.pt", seed=0, device="cpu", progress=False)
    cfg = {**CFG, "head_hidden": 8, "steps": 20, "ema_decay": 0.9}
    train_trace(data, den, cfg, tmp_path / "full.pt", seed=4, progress=False)
    train_trace(data, den, {**cfg, "ema_decay": 0.0}, tmp_path / "last.pt", seed=4, progress=False)

    def crash(step):
        if step == 13:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_trace(
            data, den, cfg, tmp_path / "part.pt", seed=4, progress=False, resume_path=tmp_path / "r.pt", on_step=crash
        )
    assert "ema" in load_checkpoint(tmp_path / "r.pt")
    train_trace(data, den, cfg, tmp_path / "part.pt", seed=4, progress=False, resume_path=tmp_path / "r.pt")
    assert _equal(_weights(tmp_path / "full.pt", "trace"), _weights(tmp_path / "part.pt", "trace"))
    assert not _equal(_weights(tmp_path / "full.pt", "trace"), _weights(tmp_path / "last.pt", "trace"))


def test_ode_states_apply_to_the_divergence_target_only(tmp_path, data):
    """states: ode leaves a net whose target reads x0 (residual) on noised data, weight for weight, and trains a
    divergence net on other states than noised data."""
    sched = get_schedule("VE")
    den = train_denoiser(data, sched, {**CFG, "steps": 10}, tmp_path / "den.pt", seed=0, device="cpu", progress=False)
    weights = {}
    for target in ("residual", "divergence"):
        for states in ("noised", "ode"):
            cfg = {**CFG, "head_hidden": 8, "steps": 6, "target": target, "states": states, "ode_num_steps": 3}
            train_trace(data, den, cfg, tmp_path / f"{target}_{states}.pt", seed=4, progress=False)
            weights[target, states] = _weights(tmp_path / f"{target}_{states}.pt", "trace")
    assert _equal(weights["residual", "noised"], weights["residual", "ode"])
    assert not _equal(weights["divergence", "noised"], weights["divergence", "ode"])


def _exact_posterior_variance(model, x, t):
    """(sigma^2/alpha) tr d ybar/dx at each state, from a full autograd Jacobian (not dfcore's JVP target)."""
    out = []
    for xi, ti in zip(x, t, strict=True):
        jac = torch.autograd.functional.jacobian(
            lambda y, ti=ti: model.denoiser.posterior_mean(y[None], ti[None])[0].double(), xi
        )
        alpha, sigma = model.schedule(ti.to(torch.float64))
        out.append(sigma**2 / alpha * torch.diagonal(jac).sum())
    return torch.stack(out)


def test_calibration_matches_the_exact_divergence_on_the_paths_and_survives_a_checkpoint(tmp_path):
    data = make_checkerboard(64, seed=0)
    den = train_denoiser(data, get_schedule("VE"), {**CFG, "steps": 10}, tmp_path / "d.pt", seed=0, progress=False)
    cfg = {**CFG, "head_hidden": 8, "steps": 5, "target": "divergence", "parameterization": "fisher"}
    model = train_trace(data, den, cfg, tmp_path / "t.pt", seed=3, progress=False)
    points = data[:5].float()
    seed, t_min, steps = 7, 1e-3, 3
    records = calibrate_along_paths(
        model, points, t_min=t_min, ode_num_steps=steps, num_bins=1, exact_max_dim=2, batch_points=5, seed=seed
    )
    # the one batch's grid offset is the first draw of the calibration's generator
    offset = float(torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    x, t = likelihood_path_states(den, points, t_min=t_min, num_steps=steps, offset=offset)
    exact = _exact_posterior_variance(model, x, t)
    with torch.no_grad():
        calibrated = model.posterior_variance(x, t)
        _, fused = model.eps_and_posterior_variance(x, t, den)
    assert records[0]["count"] == len(x) == 5 * 4 * (steps + 1)
    torch.testing.assert_close(calibrated.mean(), exact.mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(fused, calibrated, rtol=1e-6, atol=0)
    knots, offsets = model.calibration
    assert abs(float(offsets[0])) > 1e-3  # the untrained net was off, so the test can fail
    model.calibration = None
    with torch.no_grad():
        assert abs(float(model.posterior_variance(x, t).mean() / exact.mean()) - 1) > 1e-3
    model.calibration = (knots, offsets)
    rebuilt = trace_model_from_state(model.state())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.posterior_variance(x, t), calibrated, rtol=1e-6, atol=0)


def test_train_trace_calibrates_when_asked_and_records_the_table(tmp_path):
    data = make_checkerboard(64, seed=0)
    den = train_denoiser(data, get_schedule("VE"), {**CFG, "steps": 10}, tmp_path / "d.pt", seed=0, progress=False)
    cfg = {**CFG, "head_hidden": 8, "steps": 5, "target": "divergence", "ode_num_steps": 3}
    plain = train_trace(data, den, cfg, tmp_path / "plain.pt", seed=3, progress=False)
    calib = {"calibration_images": 6, "calibration_bins": 4, "calibration_probes": 1}
    train_trace(data, den, {**cfg, **calib}, tmp_path / "cal.pt", seed=3, progress=False)
    loaded = load_trace_model(tmp_path / "cal.pt")
    meta = load_checkpoint(tmp_path / "cal.pt")
    assert plain.calibration is None and loaded.calibration is not None
    assert [r["offset"] for r in meta["meta"]["calibration"]] == loaded.calibration[1].tolist()
    assert (
        sum(r["count"] for r in meta["meta"]["calibration"]) == 6 * 4 * 4
    )  # 1 batch of 6, RK4, 3 steps on a shifted grid
    x, t = data[:4].float(), torch.tensor([0.002, 0.03, 0.3, 0.9])
    with torch.no_grad():
        expected = plain.head(x, t) + offset_at(*loaded.calibration, t).float()
        torch.testing.assert_close(loaded.head(x, t), expected, rtol=1e-6, atol=1e-6)
