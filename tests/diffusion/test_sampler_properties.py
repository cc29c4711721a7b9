"""Property tests of the schedules and samplers with models whose exact answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sorakit.diffusion import (
    DDIM,
    IDDPM,
    DPMSolver,
    RectifiedFlow,
    build_objective,
    build_sampler,
    guidance_model_fn,
    linear_betas,
    shift_ratio,
    space_timesteps,
    time_shift,
)
from sorakit.diffusion import dpm_solver as dpms
from sorakit.diffusion.rflow import sampling_timesteps
from sorakit.errors import ConfigError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def acp_table(diffusion: IDDPM) -> torch.Tensor:
    """alphas_cumprod of the ORIGINAL 1000-step process (what a model trained on it knows)."""
    return diffusion.base.arrays["alphas_cumprod"]


# ---------------------------------------------------------------------------------------------
# IDDPM: forward process, posterior, exact inversion
# ---------------------------------------------------------------------------------------------


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) from the two Gaussians, computed independently in float64."""
    diffusion = IDDPM(num_sampling_steps=10)
    c = {k: v.numpy() for k, v in diffusion.coef.arrays.items()}
    x0, xt = torch.randn(10, 3, dtype=torch.float64, generator=gen(0)).unbind(1)[:2]
    t = torch.arange(1, 10)
    acp_prev, beta = c["alphas_cumprod_prev"][1:], c["betas"][1:]
    precision = 1 / (1 - acp_prev) + (1 - beta) / beta
    var = 1 / precision
    mean = var * (
        np.sqrt(acp_prev) * x0[1:].numpy() / (1 - acp_prev) + np.sqrt(1 - beta) * xt[1:].numpy() / beta
    )
    m, v, logv = diffusion.q_posterior_mean_variance(x0[1:, None], xt[1:, None], t)
    np.testing.assert_allclose(m[:, 0].numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(v[:, 0].numpy(), var, rtol=1e-10)
    np.testing.assert_allclose(logv[:, 0].numpy(), np.log(var), rtol=1e-10)


@pytest.mark.parametrize("steps", [10, 100, None])
def test_add_noise_then_exact_posterior_step(steps):
    """A model that returns the true noise recovers x0 exactly; from t = 0 one step lands on x0."""
    diffusion = IDDPM(num_sampling_steps=steps)
    x0 = torch.randn(4, 4, 2, 3, 3, dtype=torch.float64, generator=gen(1))
    noise = torch.randn(x0.shape, dtype=torch.float64, generator=gen(2))
    for i in [0, 1, diffusion.num_steps // 2, diffusion.num_steps - 1]:
        t = torch.full((4,), i)
        x_t = diffusion.add_noise(x0, noise, diffusion.model_timesteps(t))  # original timesteps
        torch.testing.assert_close(x_t, diffusion.q_sample(x0, t, noise), rtol=0, atol=1e-14)
        out = diffusion.p_mean_variance(lambda x, tt: noise, x_t, t)
        torch.testing.assert_close(out["pred_xstart"], x0, rtol=0, atol=1e-9)
        true_mean, _, _ = diffusion.q_posterior_mean_variance(x0, x_t, t)
        torch.testing.assert_close(out["mean"], true_mean, rtol=0, atol=1e-9)
        if i == 0:
            step = next(
                iter(
                    IDDPM(num_sampling_steps=1).sample_progressive(lambda x, tt: noise, x_t, generator=gen(3))
                )
            )
            torch.testing.assert_close(out["mean"], x0, rtol=0, atol=1e-12)
            torch.testing.assert_close(step["sample"], x0, rtol=0, atol=1e-12)


def test_learned_range_variance_endpoints():
    """v = -1 gives the posterior variance, v = +1 gives beta_t; nothing is NaN at t = 0 or T."""
    diffusion = IDDPM(num_sampling_steps=None)
    c = diffusion.coef.arrays
    x = torch.zeros(2, 4, 1, 2, 2, dtype=torch.float64)
    for t_val in (0, 999):
        t = torch.full((2,), t_val)
        for v, expected in (
            (-1.0, c["posterior_log_variance_clipped"][t_val]),
            (1.0, math.log(c["betas"][t_val])),
        ):
            out = torch.cat([torch.zeros_like(x), torch.full_like(x, v)], dim=1)
            res = diffusion.p_mean_variance(None, x, t, model_output=out)
            assert torch.isfinite(res["log_variance"]).all() and torch.isfinite(res["mean"]).all()
            torch.testing.assert_close(res["log_variance"], torch.full_like(x, float(expected)))


@pytest.mark.parametrize("t_val", [0, 1, 500, 999])
def test_training_losses_finite_at_extremes(t_val):
    diffusion = build_objective("iddpm")
    x0 = torch.randn(3, 4, 2, 4, 4, generator=gen(4)).clamp(-1, 1)
    x0[0, 0, 0, 0, 0] = 1.0  # the decoder-likelihood edge bins
    x0[0, 0, 0, 0, 1] = -1.0
    t = torch.full((3,), t_val)
    out = diffusion.training_losses(
        lambda x, tt: torch.cat([0.9 * x, torch.tanh(x)], 1), x0, t, generator=gen(5)
    )
    for key in ("loss", "mse", "vb"):
        assert out[key].shape == (3,) and torch.isfinite(out[key]).all(), key
    assert (out["vb"] >= -1e-6).all()


def test_training_losses_without_learned_sigma():
    diffusion = IDDPM(num_sampling_steps=None, learn_sigma=False)
    x0 = torch.randn(2, 4, 1, 4, 4, generator=gen(6))
    noise = torch.randn(x0.shape, generator=gen(7))
    out = diffusion.training_losses(lambda x, t: noise, x0, torch.tensor([3, 900]), noise=noise)
    assert out["loss"].abs().max() == 0 and out["vb"].abs().max() == 0


# ---------------------------------------------------------------------------------------------
# Reproducibility, dtypes and NaN-freedom of every sampler
# ---------------------------------------------------------------------------------------------


def toy_eps(x, t):
    return 0.9 * x + 0.05 * torch.tanh(x)


def toy_eps_sigma(x, t):
    return torch.cat([toy_eps(x, t), torch.tanh(x)], dim=1)


SAMPLER_NAMES = ["iddpm", "ddim", "dpm-solver", "rflow"]


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_interface_seeded_and_finite(name):
    z = torch.randn(2, 4, 2, 4, 4, generator=gen(8))
    sampler = build_sampler(name, 7)
    assert sampler.name == name and sampler.num_steps == 7
    a = sampler.sample(toy_eps_sigma, z, generator=gen(9))
    assert sampler.num_model_calls == 7
    b = sampler.sample(toy_eps_sigma, z, generator=gen(9))
    assert a.shape == z.shape and a.dtype == z.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    c = sampler.sample(toy_eps_sigma, z, generator=gen(10))
    stochastic = name == "iddpm"
    assert (not torch.equal(a, c)) == stochastic
    # Half-precision latents are integrated in float32 and returned in their own dtype.
    h = sampler.sample(toy_eps, z.to(torch.bfloat16), generator=gen(9))
    assert h.dtype == torch.bfloat16 and torch.isfinite(h.float()).all()


@pytest.mark.parametrize("steps", [1, 2, 1000])
def test_iddpm_extreme_step_counts(steps):
    z = torch.randn(1, 2, 1, 2, 2, generator=gen(11))
    x = IDDPM(num_sampling_steps=steps).sample(toy_eps_sigma, z, generator=gen(12))
    assert torch.isfinite(x).all()


def test_ddim_eta0_deterministic_and_exact_for_point_mass():
    """With eps exact for data = a point mass x*, deterministic DDIM lands on x* at any step count."""
    target = torch.randn(1, 4, 1, 3, 3, dtype=torch.float64, generator=gen(13))
    for steps in (3, 25):
        sampler = DDIM(num_sampling_steps=steps, eta=0.0)

        def eps_point_mass(x, t, acp=acp_table(sampler)):
            a = acp[t].view(-1, 1, 1, 1, 1)
            return (x - a.sqrt() * target) / (1 - a).sqrt()

        z = torch.randn(3, 4, 1, 3, 3, dtype=torch.float64, generator=gen(14))
        a = sampler.sample(eps_point_mass, z, generator=gen(1))
        b = sampler.sample(eps_point_mass, z, generator=gen(2))
        assert torch.equal(a, b)
        torch.testing.assert_close(a, target.expand_as(a), rtol=0, atol=1e-10)
    noisy = DDIM(num_sampling_steps=5, eta=1.0)
    assert not torch.equal(
        noisy.sample(toy_eps, z, generator=gen(1)), noisy.sample(toy_eps, z, generator=gen(2))
    )


# ---------------------------------------------------------------------------------------------
# DPM-Solver++
# ---------------------------------------------------------------------------------------------


def test_continuous_schedule_matches_discrete_keypoints():
    s = dpms.discrete_vp_schedule(linear_betas(1000), dtype=torch.float64)
    acp = IDDPM(num_sampling_steps=None).base.arrays["alphas_cumprod"]
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    torch.testing.assert_close(dpms.marginal_log_alpha(t, s), 0.5 * acp.log(), rtol=0, atol=1e-6)
    # Between keypoints log(alpha) is linear in t.
    mid = (t[:-1] + t[1:]) / 2
    expected = 0.25 * (acp[:-1].log() + acp[1:].log())
    torch.testing.assert_close(dpms.marginal_log_alpha(mid, s), expected, rtol=0, atol=1e-6)
    # Interpolation agrees with numpy's inside the range and extrapolates linearly outside.
    xs = torch.tensor([0.0005, 0.0013, 0.5, 0.9999, 1.0, 1.0004], dtype=torch.float64)
    inside = dpms.interp(xs[1:5], s.t, s.log_alpha)
    np.testing.assert_allclose(
        inside.numpy(), np.interp(xs[1:5].numpy(), s.t.numpy(), s.log_alpha.numpy()), rtol=1e-12
    )
    lam = dpms.marginal_lambda(xs[1:5], s)
    torch.testing.assert_close(dpms.inverse_lambda(lam, s), xs[1:5], rtol=0, atol=1e-9)


def test_dpm_solver_model_times_follow_open_sora():
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return toy_eps(x, t)

    sampler = DPMSolver(20)
    sampler.sample(model, torch.randn(2, 4, 1, 2, 2, generator=gen(15)))
    assert len(seen) == 20 == sampler.num_model_calls
    assert all(t.dtype == torch.float32 and t.shape == (2,) for t in seen)
    times = torch.stack([t[0] for t in seen]).double()
    expected = (torch.linspace(1.0, 1e-3, 21, dtype=torch.float64)[:-1] - 1e-3) * 1000
    torch.testing.assert_close(times, expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(sampler.timesteps.double(), expected, rtol=0, atol=1e-3)


def gaussian_eps(mu: float, std: float, s: dpms.DiscreteVPSchedule, total_n: int = 1000):
    """Exact eps-prediction for data N(mu, std^2) under the solver's continuous schedule."""

    def model(x, t_input):
        t = t_input.to(torch.float64) / 1000 + 1 / total_n
        a, sig = dpms.marginal_alpha(t, s).view(-1, 1, 1, 1, 1), dpms.marginal_std(t, s).view(-1, 1, 1, 1, 1)
        return sig * (x - a * mu) / (a**2 * std**2 + sig**2)

    return model


def exact_ode_end(z, mu, std, sampler: DPMSolver):
    s = sampler.schedule
    # The solver's own grid: a float32 linspace, so t_end is float32(1e-3), not 1e-3.
    ts = dpms.solver_time_steps(sampler.skip_type, sampler.t_start, sampler.t_end, sampler.num_steps, s)
    t0, t1 = ts[:1].double(), ts[-1:].double()
    a0, s0 = dpms.marginal_alpha(t0, s), dpms.marginal_std(t0, s)
    a1, s1 = dpms.marginal_alpha(t1, s), dpms.marginal_std(t1, s)
    return a1 * mu + torch.sqrt(a1**2 * std**2 + s1**2) / torch.sqrt(a0**2 * std**2 + s0**2) * (z - a0 * mu)


def test_dpm_solver_exact_for_point_mass():
    """For a point mass the data prediction is constant, so every DPM-Solver++ step is exact."""
    z = torch.randn(8, 2, 1, 2, 2, dtype=torch.float64, generator=gen(16))
    for order, steps in ((1, 4), (2, 20), (2, 5), (3, 9)):
        sampler = DPMSolver(steps, order=order, schedule_dtype=torch.float64)
        x = sampler.sample(gaussian_eps(0.7, 0.0, sampler.schedule), z)
        torch.testing.assert_close(x, exact_ode_end(z, 0.7, 0.0, sampler), rtol=0, atol=1e-12)


def test_dpm_solver_converges_on_gaussian_data():
    """Second-order convergence to the exact probability-flow map of Gaussian data."""
    z = torch.randn(64, 2, 1, 2, 2, dtype=torch.float64, generator=gen(17))

    def error(steps, skip_type="time_uniform", dtype=torch.float64):
        sampler = DPMSolver(steps, skip_type=skip_type, schedule_dtype=dtype)
        x = sampler.sample(gaussian_eps(1.5, 0.5, sampler.schedule), z)
        return (x - exact_ode_end(z, 1.5, 0.5, sampler)).abs().max().item()

    errors = [error(n) for n in (20, 40, 80, 160)]
    assert errors[0] > errors[1] > errors[2] > errors[3], errors
    assert errors[3] < errors[2] / 3 < errors[1] / 9, errors  # 2x steps -> ~4x smaller error
    assert errors[3] < 1e-2, errors
    # logSNR spacing is far better on such smooth data (a sanity check of inverse_lambda too).
    assert error(20, "logSNR") < 0.03 and error(20, "time_quadratic") < 0.05
    # Open-Sora's float32 schedule converges to the same answer.
    assert abs(error(160, dtype=torch.float32) - errors[3]) < 1e-3


def test_dpm_solver_matches_fine_iddpm_on_gaussian_data():
    """Fast deterministic and 1000-step ancestral sampling give the same data distribution."""
    mu, std, n = 1.5, 0.5, 4096
    z = torch.randn(n, 1, 1, 1, 1, dtype=torch.float64, generator=gen(18))
    solver = DPMSolver(100, schedule_dtype=torch.float64)
    x_fast = solver.sample(gaussian_eps(mu, std, solver.schedule), z)
    iddpm = IDDPM(num_sampling_steps=None)
    acp = acp_table(iddpm)

    def eps_discrete(x, t):
        a = acp[t].sqrt().view(-1, 1, 1, 1, 1)
        sig = (1 - acp[t]).sqrt().view(-1, 1, 1, 1, 1)
        return sig * (x - a * mu) / (a**2 * std**2 + sig**2)

    x_fine = iddpm.sample(eps_discrete, z, generator=gen(19))
    for x in (x_fast, x_fine):
        assert abs(x.mean().item() - mu) < 4 * std / math.sqrt(n)
        assert abs(x.std().item() - std) < 0.03
    assert abs(x_fast.std().item() - x_fine.std().item()) < 0.03


def test_dpm_solver_rejects_bad_settings():
    with pytest.raises(ConfigError):
        DPMSolver(1, order=2)
    with pytest.raises(ConfigError):
        DPMSolver(10, skip_type="nope")


# ---------------------------------------------------------------------------------------------
# Rectified flow
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 30])
@pytest.mark.parametrize("kwargs", [{}, {"use_discrete_timesteps": True}, {"use_timestep_transform": True}])
def test_rflow_euler_transports_gaussian_to_shifted_gaussian_exactly(steps, kwargs):
    """v = x0 - noise = mu everywhere is the exact field of N(0, I) -> N(mu, I); Euler is exact."""
    mu = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1, 1).double()
    z = torch.randn(5, 3, 2, 2, 2, dtype=torch.float64, generator=gen(20))
    sampler = RectifiedFlow(steps, height=1024, width=768, num_frames=4, **kwargs)
    seen = []

    def velocity(x, t):
        seen.append(t)
        return mu.expand_as(x)

    x = sampler.sample(velocity, z)
    torch.testing.assert_close(x, z + mu, rtol=0, atol=1e-12)
    assert sampler.num_model_calls == steps and seen[0].shape == (5,)
    assert float(seen[0][0]) == 1000.0


def test_rflow_euler_converges_for_gaussian_data():
    """Data N(mu, s^2), independent noise: the exact map from noise z is mu + s z."""
    mu, s = 0.8, 0.3

    def velocity(x, t):
        u = (t.to(x.dtype) / 1000).view(-1, 1, 1, 1, 1)
        mean, var = (1 - u) * mu, (1 - u) ** 2 * s**2 + u**2
        dmean, dvar = -mu, -2 * (1 - u) * s**2 + 2 * u
        return -(dmean + dvar / (2 * var) * (x - mean))  # v = x0 - noise = -dx/du

    z = torch.randn(32, 1, 1, 2, 2, dtype=torch.float64, generator=gen(21))
    errs = [(RectifiedFlow(n).sample(velocity, z) - (mu + s * z)).abs().max().item() for n in (10, 40, 160)]
    # First order: 4x the steps, ~4x smaller error.
    assert errs[2] < errs[1] / 3 < errs[0] / 9 and errs[2] < 0.02, errs


def test_time_shift_and_ratio():
    t = torch.linspace(0, 1000, 11, dtype=torch.float64)
    assert shift_ratio(512, 512) == 1.0 and shift_ratio(1024, 1024) == 2.0
    assert math.isclose(shift_ratio(512, 512, num_frames=4), 2.0)
    torch.testing.assert_close(time_shift(t, 1.0), t)
    shifted = time_shift(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1000 and (shifted[1:-1] > t[1:-1]).all()
    assert (shifted.diff() > 0).all()
    ts = sampling_timesteps(4, shift=2.0)
    assert ts[0] == 1000.0 and ts[1] == pytest.approx(2 * 0.75 / (1 + 0.75) * 1000)
    with pytest.raises(ConfigError):
        RectifiedFlow(10, use_timestep_transform=True).sample(toy_eps, torch.zeros(1, 4, 1, 2, 2))


def test_rflow_objective():
    objective = build_objective("rflow")
    t = objective.sample_timesteps(20000, gen(22), "cpu")
    assert t.shape == (20000,) and t.min() > 0 and t.max() < 1000
    assert abs(t.mean().item() - 500) < 10  # sigmoid(N(0, 1)) is symmetric around 1/2
    assert torch.equal(t, objective.sample_timesteps(20000, gen(22), "cpu"))
    shifted = build_objective("rflow", use_timestep_transform=True).sample_timesteps(
        20000, gen(22), "cpu", height=1024, width=1024
    )
    assert (shifted >= t - 1e-3).all() and shifted.mean() > t.mean() + 50

    x0 = torch.randn(4, 4, 2, 3, 3, generator=gen(23))
    noise = torch.randn(x0.shape, generator=gen(24))
    t = torch.tensor([0.0, 250.0, 999.0, 1000.0])
    exact = objective.training_losses(lambda x, tt: x0 - noise, x0, t, noise=noise)
    assert exact["loss"].shape == (4,) and exact["loss"].abs().max() == 0
    torch.testing.assert_close(exact["x_t"][0], x0[0])
    torch.testing.assert_close(exact["x_t"][3], noise[3])
    wrong = objective.training_losses(lambda x, tt: torch.cat([x0, x0], 1), x0, t, noise=noise)
    torch.testing.assert_close(wrong["loss"], (noise**2).mean(dim=(1, 2, 3, 4)))


def test_rflow_fixed_shift_moves_training_times_and_sampling_steps():
    base, shifted = build_objective("rflow"), build_objective("rflow", shift=3.0)
    t = base.sample_timesteps(5000, gen(25), "cpu")
    torch.testing.assert_close(shifted.sample_timesteps(5000, gen(25), "cpu"), time_shift(t, 3.0))
    assert RectifiedFlow(4, shift=3.0).timesteps == sampling_timesteps(4, shift=3.0)
    assert RectifiedFlow(4, shift=3.0).timesteps[1] == pytest.approx(3 * 0.75 / (1 + 2 * 0.75) * 1000)
    assert RectifiedFlow(4).timesteps == [1000.0, 750.0, 500.0, 250.0]
    # still an exact transport for a constant field, whatever the step times
    mu = torch.tensor([0.5, -1.0]).view(1, 2, 1, 1, 1).double()
    z = torch.randn(3, 2, 1, 2, 2, dtype=torch.float64, generator=gen(26))
    torch.testing.assert_close(RectifiedFlow(5, shift=3.0).sample(lambda x, tt: mu.expand_as(x), z), z + mu)
    for bad in (0, -1.0, "3"):
        with pytest.raises(ConfigError):
            RectifiedFlow(4, shift=bad)


def test_velocity_model_drives_ddpm_samplers():
    """A rectified-flow velocity field, wrapped by velocity_as_eps, is the exact eps of the VP path: DDIM and
    DPM-Solver then land on a point mass, and the wrapped eps matches the closed form at any timestep."""
    from sorakit.diffusion.rflow import velocity_as_eps
    from sorakit.diffusion.schedules import linear_betas

    target = torch.randn(1, 3, 2, 2, 2, dtype=torch.float64, generator=gen(27))
    seen = []

    def velocity_point_mass(x, t):  # x = (1 - s) x* + s n  ->  v = x* - n
        seen.append(t)
        s = (t.to(torch.float64) / 1000).view(-1, 1, 1, 1, 1)
        return target - (x - (1 - s) * target) / s

    eps_fn = velocity_as_eps(velocity_point_mass)
    acp = torch.cumprod(1 - torch.as_tensor(linear_betas(1000), dtype=torch.float64), 0)
    x = torch.randn(4, 3, 2, 2, 2, dtype=torch.float64, generator=gen(28))
    for t in (0, 17, 500, 999):
        a = acp[t]
        want = (x - a.sqrt() * target) / (1 - a).sqrt()
        torch.testing.assert_close(eps_fn(x, torch.full((4,), t)), want, rtol=1e-9, atol=1e-9)
    # fractional (DPM-Solver) times interpolate log(alpha_bar)
    frac = eps_fn(x, torch.full((4,), 250.5, dtype=torch.float64))
    a = torch.exp(0.5 * (acp[250].log() + acp[251].log()))
    torch.testing.assert_close(frac, (x - a.sqrt() * target) / (1 - a).sqrt(), rtol=1e-9, atol=1e-9)
    assert all(float(t.max()) <= 1000 for t in seen)
    z = torch.randn(3, 3, 2, 2, 2, dtype=torch.float64, generator=gen(29))
    ddim = DDIM(num_sampling_steps=7, eta=0.0)
    torch.testing.assert_close(ddim.sample(eps_fn, z), target.expand_as(z), rtol=0, atol=1e-9)
    for order, steps in (
        (1, 4),
        (2, 6),
        (3, 9),
    ):  # DPM-Solver stops at t = 1/N, where the exact ODE end is known
        dpm = DPMSolver(steps, order=order, schedule_dtype=torch.float64)
        out = dpm.sample(velocity_as_eps(velocity_point_mass, sampler=dpm), z)
        torch.testing.assert_close(out, exact_ode_end(z, target, 0.0, dpm), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Builders, guidance wrapper
# ---------------------------------------------------------------------------------------------


def test_builders_validate():
    with pytest.raises(ConfigError):
        build_sampler("euler-a", 10)
    with pytest.raises(ConfigError):
        build_sampler("iddpm", 0)
    with pytest.raises(ConfigError):
        build_sampler("iddpm", 2000)
    with pytest.raises(ConfigError):
        build_sampler("ddim", 10, not_an_option=1)
    with pytest.raises(ConfigError):
        build_objective("edm")
    assert build_sampler("dpm-solver++", 20).name == "dpm-solver"
    iddpm = build_objective("iddpm")
    assert iddpm.num_steps == 1000
    t = iddpm.sample_timesteps(50, gen(25), "cpu")
    assert t.dtype == torch.int64 and 0 <= t.min() and t.max() < 1000
    assert torch.equal(t, iddpm.sample_timesteps(50, gen(25), "cpu"))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))


def test_cfg_wrapper_batches_cond_and_null_rows_once():
    calls = []

    def model(x, t, y, mask=None, scale_bias=0.0):
        calls.append((x.shape[0], None if mask is None else mask.shape[0]))
        return torch.cat([x * y.view(-1, 1, 1, 1, 1) + scale_bias, x], dim=1)

    x = torch.randn(3, 2, 1, 2, 2, generator=gen(26))
    y, y_null = torch.full((3,), 2.0), torch.zeros(3)
    mask = torch.ones(3, 5, dtype=torch.long)
    fn = guidance_model_fn(model, y, y_null, 4.0, mask=mask, scale_bias=1.0)
    out = fn(x, torch.zeros(3))
    assert calls == [(6, 6)]
    torch.testing.assert_close(out[:, :2], 1.0 + 4.0 * (2 * x))  # uncond 1 + 4 * (2x + 1 - 1)
    torch.testing.assert_close(out[:, 2:], x)
    calls.clear()
    guidance_model_fn(model, y, y_null, 1.0, mask=mask)(x, torch.zeros(3))
    assert calls == [(3, 3)]
