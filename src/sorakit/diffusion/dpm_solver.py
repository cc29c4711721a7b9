"""DPM-Solver++ (multistep, data prediction) exactly as Open-Sora 1.0 runs it.

Open-Sora's fast sampler (opensora/schedulers/dpms, from Lu et al.'s reference code) solves the
diffusion ODE in CONTINUOUS time for a discrete-time model:
- the 1000-step linear schedule becomes a piecewise-linear function of `t` in (0, 1]: keypoints
  t_k = (k + 1) / 1000 carry log(alpha_k) = 0.5 * cumsum(log(1 - beta))_k, interpolated
  (and extrapolated) linearly; the whole schedule is float32;
- it integrates from t = 1 to t = 1/N = 1e-3 with "time_uniform" steps (linspace in t);
- the model is called at `t_input = (t - 1/N) * 1000`, a float, not an integer timestep;
- multistep order 2 (first step order 1), with `lower_order_final` (only below 10 steps);
- DPM-Solver++: updates use the data prediction x0 = (x - sigma_t * eps) / alpha_t.

diffusers' DPMSolverMultistepScheduler works on the discrete timestep grid (integer timesteps,
alphas looked up, not interpolated), so it does not compute these updates; the update rules are
written here by hand, as small pure functions, and reproduce the original numbers (same float32
schedule arithmetic, same operation order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sorakit.diffusion import condition as cnd
from sorakit.diffusion.common import CallCounter, ModelFn, compute_dtype, progress_iter, split_prediction
from sorakit.diffusion.schedules import named_betas
from sorakit.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# The continuous-time view of a discrete VP schedule.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiscreteVPSchedule:
    """Keypoints of a discrete schedule in continuous time.

    Attributes:
        t: [K] continuous times (k + 1) / K, ascending.
        log_alpha: [K] log(alpha_t) = 0.5 * log(alphas_cumprod) at those times.
        total_n: K (the number of training timesteps kept).
    """

    t: torch.Tensor
    log_alpha: torch.Tensor
    total_n: int

    def to(self, device) -> DiscreteVPSchedule:
        return DiscreteVPSchedule(self.t.to(device), self.log_alpha.to(device), self.total_n)


def discrete_vp_schedule(
    betas: np.ndarray, dtype: torch.dtype = torch.float32, clipped_lambda: float = -5.1
) -> DiscreteVPSchedule:
    """Build the continuous-time keypoints from betas (log alphas computed in float64, then cast).

    Steps at the end whose half-log-SNR falls below `clipped_lambda` are dropped (they only matter
    for the cosine schedule; the linear one ends at lambda = -5.06).
    """
    betas64 = torch.from_numpy(np.asarray(betas, dtype=np.float64))
    log_alphas = 0.5 * torch.log(1 - betas64).cumsum(dim=0)
    lambdas = log_alphas - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alphas))
    cut = int(torch.searchsorted(torch.flip(lambdas, [0]), torch.tensor(clipped_lambda, dtype=torch.float64)))
    if cut > 0:
        log_alphas = log_alphas[:-cut]
    total_n = log_alphas.shape[0]
    # The keypoint times come from a float32 linspace, as in the reference implementation.
    t = torch.linspace(0.0, 1.0, total_n + 1, dtype=torch.float32)[1:].to(dtype)
    return DiscreteVPSchedule(t=t, log_alpha=log_alphas.to(dtype), total_n=total_n)


def interp(x: torch.Tensor, xp: torch.Tensor, yp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear f(x) through (xp, yp), xp ascending; linear extrapolation outside.

    x: [M]; xp, yp: [K]. A point exactly on a keypoint uses the segment to its left (the same
    segment the reference implementation's sort-based search picks).
    """
    k = xp.shape[0]
    j = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, k - 2)
    x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def marginal_log_alpha(t: torch.Tensor, s: DiscreteVPSchedule) -> torch.Tensor:
    """log(alpha_t) for continuous t [M] (or 0-dim -> [1])."""
    return interp(t.reshape(-1), s.t, s.log_alpha)


def marginal_alpha(t: torch.Tensor, s: DiscreteVPSchedule) -> torch.Tensor:
    """alpha_t = exp(log alpha_t)."""
    return torch.exp(marginal_log_alpha(t, s))


def marginal_std(t: torch.Tensor, s: DiscreteVPSchedule) -> torch.Tensor:
    """sigma_t = sqrt(1 - alpha_t^2)."""
    return torch.sqrt(1.0 - torch.exp(2.0 * marginal_log_alpha(t, s)))


def marginal_lambda(t: torch.Tensor, s: DiscreteVPSchedule) -> torch.Tensor:
    """Half-log-SNR lambda_t = log(alpha_t) - log(sigma_t)."""
    log_alpha = marginal_log_alpha(t, s)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def inverse_lambda(lam: torch.Tensor, s: DiscreteVPSchedule) -> torch.Tensor:
    """The continuous t with half-log-SNR `lam` [M]."""
    log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,), dtype=lam.dtype, device=lam.device), -2.0 * lam)
    return interp(log_alpha.reshape(-1), torch.flip(s.log_alpha, [0]), torch.flip(s.t, [0]))


def model_input_time(t: torch.Tensor, total_n: int) -> torch.Tensor:
    """Continuous t in [1/N, 1] -> the model's timestep scale [0, 1000 (N-1)/N]."""
    return (t - 1.0 / total_n) * 1000.0


def solver_time_steps(
    skip_type: str, t_start: float, t_end: float, num_steps: int, s: DiscreteVPSchedule
) -> torch.Tensor:
    """The N + 1 times the solver visits, from t_start down to t_end (float32 like the reference)."""
    device = s.t.device
    if skip_type == "time_uniform":
        ts = torch.linspace(t_start, t_end, num_steps + 1, dtype=torch.float32)
    elif skip_type == "time_quadratic":
        ts = torch.linspace(t_start**0.5, t_end**0.5, num_steps + 1, dtype=torch.float32).pow(2)
    elif skip_type == "logSNR":
        lam_t = marginal_lambda(torch.tensor(t_start, dtype=s.t.dtype, device=device), s)
        lam_0 = marginal_lambda(torch.tensor(t_end, dtype=s.t.dtype, device=device), s)
        lams = torch.linspace(lam_t.item(), lam_0.item(), num_steps + 1, dtype=torch.float32)
        return inverse_lambda(lams.to(device=device, dtype=s.t.dtype), s)
    else:
        raise ConfigError(f"unknown skip_type {skip_type!r} (choose time_uniform, time_quadratic or logSNR)")
    # Times are a float32 linspace as in the reference; a float64 schedule gets them widened.
    return ts.to(device=device, dtype=s.t.dtype)


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ updates (data prediction). Scalars are [1]-shaped schedule tensors.
# ---------------------------------------------------------------------------------------------


def dpmpp_first_order(x, x0_s, lambda_s, lambda_t, sigma_s, sigma_t, alpha_t):
    """DPM-Solver++(1) (= DDIM): x_t = sigma_t / sigma_s * x - alpha_t * expm1(-h) * x0_s."""
    h = lambda_t - lambda_s
    phi_1 = torch.expm1(-h)
    return sigma_t / sigma_s * x - alpha_t * phi_1 * x0_s


def dpmpp_multistep_second_order(
    x, x0_prev_1, x0_prev_0, lambda_prev_1, lambda_prev_0, lambda_t, sigma_prev_0, sigma_t, alpha_t
):
    """Multistep DPM-Solver++(2M) from t_prev_0 to t, using the two latest x0 predictions."""
    h_0 = lambda_prev_0 - lambda_prev_1
    h = lambda_t - lambda_prev_0
    r0 = h_0 / h
    d1_0 = (1.0 / r0) * (x0_prev_0 - x0_prev_1)
    phi_1 = torch.expm1(-h)
    return (sigma_t / sigma_prev_0) * x - (alpha_t * phi_1) * x0_prev_0 - 0.5 * (alpha_t * phi_1) * d1_0


def dpmpp_multistep_third_order(x, x0s, lambdas, lambda_t, sigma_prev_0, sigma_t, alpha_t):
    """Multistep DPM-Solver++(3M): x0s = (x0_prev_2, x0_prev_1, x0_prev_0), lambdas likewise."""
    m2, m1, m0 = x0s
    l2, l1, l0 = lambdas
    h_1, h_0, h = l1 - l2, l0 - l1, lambda_t - l0
    r0, r1 = h_0 / h, h_1 / h
    d1_0 = (1.0 / r0) * (m0 - m1)
    d1_1 = (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    phi_1 = torch.expm1(-h)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    return (
        (sigma_t / sigma_prev_0) * x
        - (alpha_t * phi_1) * m0
        + (alpha_t * phi_2) * d1
        - (alpha_t * phi_3) * d2
    )


def dpmpp_update(x, x0_list, t_list, t, order: int, s: DiscreteVPSchedule) -> torch.Tensor:
    """One multistep DPM-Solver++ update of `order` from t_list[-1] to t, with the x0 history `x0_list`."""
    sigma_prev, sigma_t, alpha_t = marginal_std(t_list[-1], s), marginal_std(t, s), marginal_alpha(t, s)

    def lam(tt):
        return marginal_lambda(tt, s)

    if order == 1:
        return dpmpp_first_order(x, x0_list[-1], lam(t_list[-1]), lam(t), sigma_prev, sigma_t, alpha_t)
    if order == 2:
        return dpmpp_multistep_second_order(
            x,
            x0_list[-2],
            x0_list[-1],
            lam(t_list[-2]),
            lam(t_list[-1]),
            lam(t),
            sigma_prev,
            sigma_t,
            alpha_t,
        )
    lambdas = tuple(lam(tt) for tt in t_list[-3:])
    return dpmpp_multistep_third_order(x, tuple(x0_list[-3:]), lambdas, lam(t), sigma_prev, sigma_t, alpha_t)


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------


class DPMSolver:
    """Multistep DPM-Solver++ sampler with Open-Sora 1.0's settings as defaults.

    Args:
        num_sampling_steps: number of model evaluations N (Open-Sora: 20).
        order: 1, 2 (default, Open-Sora) or 3.
        skip_type: "time_uniform" (Open-Sora), "time_quadratic" or "logSNR".
        lower_order_final: use lower orders for the last steps when N < 10 (reference behaviour).
        num_timesteps, noise_schedule: the discrete training schedule (1000, "linear").
        t_start, t_end: integration interval in continuous time (default 1 and 1/num_timesteps).
        schedule_dtype: dtype of the continuous schedule (float32 = reference).

    `model_fn(x, t_input)` gets t_input as a float tensor [B] on the 0..999 scale and returns eps
    (C channels) or eps|variance (2C channels; the variance half is ignored). Deterministic:
    `generator` is accepted for interface uniformity and not used.
    """

    name = "dpm-solver"

    def __init__(
        self,
        num_sampling_steps: int = 20,
        order: int = 2,
        skip_type: str = "time_uniform",
        lower_order_final: bool = True,
        num_timesteps: int = 1000,
        noise_schedule: str = "linear",
        t_start: float | None = None,
        t_end: float | None = None,
        schedule_dtype: torch.dtype = torch.float32,
    ) -> None:
        if order not in (1, 2, 3):
            raise ConfigError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
        if num_sampling_steps < order:
            raise ConfigError(f"DPM-Solver needs at least order={order} steps, got {num_sampling_steps}")
        if skip_type not in ("time_uniform", "time_quadratic", "logSNR"):
            raise ConfigError(
                f"unknown skip_type {skip_type!r} (choose time_uniform, time_quadratic or logSNR)"
            )
        self.num_steps = int(num_sampling_steps)
        self.order = order
        self.skip_type = skip_type
        self.lower_order_final = lower_order_final
        self.schedule = discrete_vp_schedule(named_betas(noise_schedule, num_timesteps), dtype=schedule_dtype)
        self.t_start = 1.0 if t_start is None else float(t_start)
        self.t_end = 1.0 / self.schedule.total_n if t_end is None else float(t_end)
        if not 0 < self.t_end < self.t_start <= 1.0:
            raise ConfigError(f"DPM-Solver needs 0 < t_end < t_start <= 1, got {self.t_end}, {self.t_start}")
        self.num_model_calls = 0

    @property
    def timesteps(self) -> torch.Tensor:
        """The model timesteps (0..999 scale, float) of the N evaluations, in order."""
        ts = solver_time_steps(self.skip_type, self.t_start, self.t_end, self.num_steps, self.schedule)
        return model_input_time(ts[:-1], self.schedule.total_n)

    def alpha_bar_at(self, t_input: torch.Tensor) -> torch.Tensor:
        """The alpha_bar (float64 [M]) this solver assumes at the model time `t_input` it calls the model with
        (for a model that is not an eps model, see :func:`sorakit.diffusion.rflow.velocity_as_eps`)."""
        t = t_input.to(torch.float64).reshape(-1) / 1000.0 + 1.0 / self.schedule.total_n
        s = self.schedule
        return torch.exp(2.0 * interp(t, s.t.to(torch.float64), s.log_alpha.to(torch.float64)))

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        return_intermediates: bool = False,
        condition: cnd.Condition | None = None,
    ):
        """Integrate from noise `z` [B, C, ...] at t_start to t_end; returns x (z's dtype).

        With `return_intermediates=True` returns (x, list of x after each step). With a `condition`
        (reference frames, `sorakit.diffusion.condition`; level = the continuous t) the model gets `x_mask=`,
        and the data prediction of frames held at their reference is the reference itself, so the multistep
        history of a frame that enters later (SDEdit) is the clean reference.
        """
        s = self.schedule.to(z.device)
        counter = CallCounter(model_fn)
        self.num_model_calls = 0
        x = z.to(compute_dtype(z.dtype))
        z0, cond, held = x, (condition.to(x) if condition is not None else None), [1.0, None]
        if cond is not None:
            x = cnd.start(z0, cond)

        def data_prediction(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(x after entering frames, x0 prediction) at continuous time t."""
            alpha_t, sigma_t = marginal_alpha(t, s), marginal_std(t, s)
            kw = {}
            if cond is not None:
                x, kw["x_mask"] = cnd.enter(
                    x, z0, cond, float(t), held[0], lambda r, n: alpha_t * r + sigma_t * n
                )
                held[:] = [float(t), kw["x_mask"]]
            t_in = model_input_time(t.expand(x.shape[0]), s.total_n)
            eps, _ = split_prediction(counter(x, t_in, **kw), x.shape[1])
            x0 = (x - sigma_t * eps) / alpha_t
            return x, (x0 if cond is None else cnd.select_frames(kw["x_mask"], x0, cond.latents))

        def step(x, x0_list, t_list, t, order):
            x = dpmpp_update(x, x0_list, t_list, t, order, s)
            return x if cond is None else cnd.hold(x, cond, held[1])

        ts = solver_time_steps(self.skip_type, self.t_start, self.t_end, self.num_steps, s)
        n, order = self.num_steps, self.order
        intermediates = []
        with torch.no_grad():
            t_list = [ts[0]]
            x, x0 = data_prediction(x, ts[0])
            x0_list = [x0]
            # Warm up with lower orders until enough history exists.
            for i in range(1, order):
                x = step(x, x0_list, t_list, ts[i], i)
                intermediates.append(x)
                t_list.append(ts[i])
                x, x0 = data_prediction(x, ts[i])
                x0_list.append(x0)
            for i in progress_iter(range(order, n + 1), progress, n + 1 - order, "dpm-solver"):
                step_order = min(order, n + 1 - i) if (self.lower_order_final and n < 10) else order
                x = step(x, x0_list, t_list, ts[i], step_order)
                intermediates.append(x)
                t_list = t_list[1:] + [ts[i]]
                if i < n:  # the last model value would never be used
                    x, x0 = data_prediction(x, ts[i])
                    x0_list = x0_list[1:] + [x0]
                self.num_model_calls = counter.calls
        self.num_model_calls = counter.calls
        x = x.to(z.dtype)
        return (x, intermediates) if return_intermediates else x

    def __repr__(self) -> str:
        return f"DPMSolver(num_steps={self.num_steps}, order={self.order}, skip_type={self.skip_type!r})"
