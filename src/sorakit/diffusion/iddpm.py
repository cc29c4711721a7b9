"""IDDPM (improved DDPM) exactly as Open-Sora 1.0 uses it, plus DDIM on the same respaced schedule.

Layout: pure per-step functions first (each one update rule, testable without a network), then the
thin `IDDPM` class that holds the schedule and gives the familiar interface (`timesteps`,
`add_noise` / `q_sample`, `p_mean_variance`, `training_losses`, `sample`), then `DDIM`.

Open-Sora 1.0 facts reproduced here (see ../shared/fixtures/opensora-v1.0/README.md):
- linear betas 1e-4 -> 0.02 over 1000 steps; epsilon prediction; learned-range variance (the model
  returns 2C channels: eps | v, with log-variance = frac*log(beta) + (1-frac)*log(posterior var),
  frac = (v+1)/2, not clamped);
- respacing to N sampling steps keeps `space_timesteps(1000, N)` and the model is always called
  with the ORIGINAL timestep (int64), never the respaced index;
- training loss = MSE(eps) + variational bound for the variance (with the eps detached), the bound
  at t = 0 being the discretised Gaussian decoder NLL; both in bits.

One deliberate difference: Open-Sora rounds every schedule coefficient to float32 before use; here
they stay float64 and are cast once to the compute dtype of the latents (float64 latents get
float64 coefficients). `coefficient_dtype=torch.float32` restores the upstream rounding for
bit-for-bit parity checks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from sorakit.diffusion import condition as cnd
from sorakit.diffusion.common import (
    CallCounter,
    ModelFn,
    channel_weighted,
    compute_dtype,
    expand_to,
    masked_mean_flat,
    progress_iter,
    randn_like,
    split_prediction,
)
from sorakit.diffusion.schedules import gaussian_coefficients, named_betas, respace_betas, space_timesteps
from sorakit.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Pure functions. Coefficients are tensors broadcastable to x ([B, 1, 1, ...]).
# ---------------------------------------------------------------------------------------------


def q_sample(
    x_start: torch.Tensor, noise: torch.Tensor, sqrt_acp: torch.Tensor, sqrt_one_minus_acp: torch.Tensor
):
    """x_t = sqrt(acp_t) * x_0 + sqrt(1 - acp_t) * noise. Shapes: [B, C, ...]."""
    return sqrt_acp * x_start + sqrt_one_minus_acp * noise


def predict_xstart_from_eps(x_t, eps, sqrt_recip_acp, sqrt_recipm1_acp):
    """x_0 = sqrt(1/acp_t) * x_t - sqrt(1/acp_t - 1) * eps."""
    return sqrt_recip_acp * x_t - sqrt_recipm1_acp * eps


def predict_eps_from_xstart(x_t, x_start, sqrt_recip_acp, sqrt_recipm1_acp):
    """eps = (sqrt(1/acp_t) * x_t - x_0) / sqrt(1/acp_t - 1)."""
    return (sqrt_recip_acp * x_t - x_start) / sqrt_recipm1_acp


def posterior_mean(x_start, x_t, coef1, coef2):
    """Mean of q(x_{t-1} | x_t, x_0) = coef1_t * x_0 + coef2_t * x_t."""
    return coef1 * x_start + coef2 * x_t


def learned_range_log_variance(v: torch.Tensor, min_log: torch.Tensor, max_log: torch.Tensor) -> torch.Tensor:
    """Log-variance interpolated between the posterior's (v = -1) and beta_t's (v = +1).

    `v` is the model's variance output, used as is (not clamped), as upstream.
    """
    frac = (v + 1) / 2
    return frac * max_log + (1 - frac) * min_log


def ancestral_step(
    mean: torch.Tensor, log_variance: torch.Tensor, noise: torch.Tensor, last: bool
) -> torch.Tensor:
    """x_{t-1} = mean + exp(log_var / 2) * noise, or just the mean at the last step (t = 0)."""
    if last:
        return mean
    return mean + torch.exp(0.5 * log_variance) * noise


def ddim_step(pred_xstart, eps, acp_prev, sigma, noise: torch.Tensor | None):
    """DDIM update (Song et al. eq. 12): sqrt(acp_prev) x_0 + sqrt(1 - acp_prev - sigma^2) eps + sigma z."""
    mean = pred_xstart * torch.sqrt(acp_prev) + torch.sqrt(1 - acp_prev - sigma**2) * eps
    return mean if noise is None else mean + sigma * noise


def ddim_sigma(acp, acp_prev, eta: float):
    """DDIM noise scale: eta * sqrt((1 - acp_prev) / (1 - acp)) * sqrt(1 - acp / acp_prev)."""
    return eta * torch.sqrt((1 - acp_prev) / (1 - acp)) * torch.sqrt(1 - acp / acp_prev)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dimensions: [B, ...] -> [B]."""
    return x.mean(dim=list(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by IDDPM's decoder likelihood."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor):
    """Log-likelihood (nats) of data in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2).

    The outermost bins extend to +-infinity (edges at +-0.999). Probabilities are clamped at 1e-12
    so the log never sees 0.
    """
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


# ---------------------------------------------------------------------------------------------
# Coefficient storage: float64 once, cast once per (dtype, device).
# ---------------------------------------------------------------------------------------------


class CoefficientTable:
    """Per-step schedule arrays kept in float64; each is cast to a (dtype, device) once and cached.

    Args:
        arrays: name -> float64 numpy array [T].
        dtype: if given, every coefficient is rounded to this dtype regardless of the latents'
            (torch.float32 reproduces Open-Sora's rounding); default: the latents' compute dtype.
    """

    def __init__(self, arrays: dict[str, np.ndarray], dtype: torch.dtype | None = None) -> None:
        self.arrays = {k: torch.from_numpy(np.asarray(v, dtype=np.float64).copy()) for k, v in arrays.items()}
        self.dtype = dtype
        self._cache: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.arrays["betas"])

    def get(self, name: str, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """The whole array `name` [T] in `dtype` on `device` (cached)."""
        dtype = self.dtype or dtype
        key = (name, dtype, torch.device(device))
        if key not in self._cache:
            self._cache[key] = self.arrays[name].to(device=device, dtype=dtype)
        return self._cache[key]

    def extract(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """`name[t]` shaped [B, 1, 1, ...] to broadcast against `like` [B, ...]."""
        arr = self.get(name, compute_dtype(like.dtype), like.device)
        return expand_to(arr[t.to(arr.device)], like)


# ---------------------------------------------------------------------------------------------
# The IDDPM class.
# ---------------------------------------------------------------------------------------------


class IDDPM:
    """Open-Sora 1.0's IDDPM: a (respaced) discrete Gaussian diffusion with learned-range variance.

    Also the "iddpm" sampler (`sample`) and training objective (`training_losses`,
    `sample_timesteps`). For training build it with `num_sampling_steps=None` (all 1000 steps).

    Args:
        num_sampling_steps: sampling steps N (respaced with `space_timesteps(num_timesteps, N)`);
            None keeps all `num_timesteps` steps (the training diffusion).
        num_timesteps: steps of the original process (1000).
        learn_sigma: whether the model predicts the variance too (2C output channels). Sampling
            detects it from the channel count anyway; this is what a trainer builds the model for.
        noise_schedule: "linear" (Open-Sora) or "cosine".
        timestep_respacing: instead of N, a section list ("10,15,20") or "ddimN"; overrides N.
        sigma_small: for a model without learned variance, use the posterior variance (True) or
            beta (False, upstream's FIXED_LARGE default).
        clip_denoised: clamp predicted x_0 to [-1, 1] while sampling (Open-Sora: False).
        coefficient_dtype: round the schedule coefficients to this dtype (torch.float32 = upstream
            parity); default None = cast once to the latents' compute dtype.
    """

    name = "iddpm"

    def __init__(
        self,
        num_sampling_steps: int | None = 100,
        num_timesteps: int = 1000,
        learn_sigma: bool = True,
        noise_schedule: str = "linear",
        timestep_respacing: str | Sequence[int] | None = None,
        sigma_small: bool = False,
        clip_denoised: bool = False,
        coefficient_dtype: torch.dtype | None = None,
    ) -> None:
        if num_timesteps < 1:
            raise ConfigError(f"num_timesteps must be >= 1, got {num_timesteps}")
        if num_sampling_steps is not None and not 1 <= num_sampling_steps <= num_timesteps:
            raise ConfigError(f"num_sampling_steps must be in [1, {num_timesteps}], got {num_sampling_steps}")
        base_betas = named_betas(noise_schedule, num_timesteps)
        base = gaussian_coefficients(base_betas)
        if timestep_respacing is None or timestep_respacing == "":
            timestep_respacing = num_timesteps if num_sampling_steps is None else num_sampling_steps
        use = space_timesteps(num_timesteps, timestep_respacing)
        # Like upstream, even "all steps" goes through respacing (betas recomputed from acp).
        betas, timestep_map = respace_betas(base["alphas_cumprod"], use)
        arrays = gaussian_coefficients(betas)
        # FIXED_LARGE: beta_t, except posterior_variance[1] at t = 0 (a better decoder likelihood).
        fixed_large = np.append(arrays["posterior_variance"][1:2], betas[1:]) if len(betas) > 1 else betas
        arrays["fixed_large_variance"] = fixed_large
        arrays["fixed_large_log_variance"] = np.log(arrays["fixed_large_variance"])
        self.num_timesteps = num_timesteps
        self.learn_sigma = learn_sigma
        self.sigma_small = sigma_small
        self.clip_denoised = clip_denoised
        self.coefficient_dtype = coefficient_dtype
        self.base = CoefficientTable(base, coefficient_dtype)
        self.coef = CoefficientTable(arrays, coefficient_dtype)
        self.timestep_map = torch.from_numpy(timestep_map)
        self.num_model_calls = 0

    # -- schedule views ---------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Number of (respaced) steps, i.e. model calls per sample."""
        return len(self.timestep_map)

    @property
    def timesteps(self) -> torch.Tensor:
        """Original (model) timesteps in sampling order, descending: int64 [N]."""
        return self.timestep_map.flip(0)

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Respaced indices [B] -> the original timesteps the model is called with (int64 [B])."""
        return self.timestep_map.to(t.device)[t.long()]

    def _fixed_variance_names(self) -> tuple[str, str]:
        if self.sigma_small:
            return "posterior_variance", "posterior_log_variance_clipped"
        return "fixed_large_variance", "fixed_large_log_variance"

    # -- forward process ----------------------------------------------------------------------
    def q_sample(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample q(x_t | x_0) for respaced indices `t` [B]. x_start, noise: [B, C, ...]."""
        if noise is None:
            noise = randn_like(x_start, generator)
        c = self.coef
        return q_sample(
            x_start,
            noise,
            c.extract("sqrt_alphas_cumprod", t, x_start),
            c.extract("sqrt_one_minus_alphas_cumprod", t, x_start),
        )

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """diffusers-style `add_noise` with ORIGINAL timesteps in [0, num_timesteps) (any respacing)."""
        b = self.base
        return q_sample(
            original_samples,
            noise,
            b.extract("sqrt_alphas_cumprod", timesteps, original_samples),
            b.extract("sqrt_one_minus_alphas_cumprod", timesteps, original_samples),
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0): (mean [B, C, ...], variance [B, 1, ...], clipped log-variance [B, 1, ...])."""
        c = self.coef
        mean = posterior_mean(
            x_start, x_t, c.extract("posterior_mean_coef1", t, x_t), c.extract("posterior_mean_coef2", t, x_t)
        )
        return (
            mean,
            c.extract("posterior_variance", t, x_t),
            c.extract("posterior_log_variance_clipped", t, x_t),
        )

    # -- reverse process ----------------------------------------------------------------------
    def p_mean_variance(
        self,
        model_fn: ModelFn | None,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool | None = None,
        model_output: torch.Tensor | None = None,
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t) from the model at respaced indices `t` [B].

        The model is called as `model_fn(x, original_timesteps, **model_kwargs)`; pass
        `model_output` instead to skip the call. A 2C-channel output means learned-range variance,
        a C-channel output fixed variance.

        Returns: dict with mean, variance, log_variance, pred_xstart (all [B, C, ...]), eps, model_output.
        """
        if clip_denoised is None:
            clip_denoised = self.clip_denoised
        if model_output is None:
            model_output = model_fn(x, self.model_timesteps(t), **model_kwargs)
        c = self.coef
        eps, v = split_prediction(model_output, x.shape[1])
        if v is not None:
            log_variance = learned_range_log_variance(
                v, c.extract("posterior_log_variance_clipped", t, x), c.extract("log_betas", t, x)
            )
            variance = torch.exp(log_variance)
        else:
            var_name, log_name = self._fixed_variance_names()
            shape_like = torch.zeros_like(x)
            variance = c.extract(var_name, t, x) + shape_like
            log_variance = c.extract(log_name, t, x) + shape_like
        pred_xstart = predict_xstart_from_eps(
            x,
            eps,
            c.extract("sqrt_recip_alphas_cumprod", t, x),
            c.extract("sqrt_recipm1_alphas_cumprod", t, x),
        )
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
            "model_output": model_output,
        }

    def _enter(
        self, x: torch.Tensor, z: torch.Tensor, cond: cnd.Condition | None, t: torch.Tensor, prev: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], float]:
        """Reference frames before the model call at respaced index `t` [B]: (x, model kwargs, level).
        The level is the original timestep / num_timesteps; entering SDEdit frames are noised to it."""
        if cond is None:
            return x, {}, prev
        t_model = self.model_timesteps(t)
        level = float(t_model[0]) / self.num_timesteps
        x, x_mask = cnd.enter(x, z, cond, level, prev, lambda r, n: self.add_noise(r, n, t_model))
        return x, {"x_mask": x_mask}, level

    def sample_progressive(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        noise: Iterable[torch.Tensor] | None = None,
        condition: cnd.Condition | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Ancestral sampling, one dict per step (p_mean_variance keys + "sample", "t" = respaced index).

        Args:
            model_fn: `model_fn(x [B, C, ...], t [B] int64 original timesteps) -> eps or eps|v`.
            z: starting noise [B, C, ...].
            generator: for the per-step noise (reproducible with a seed).
            noise: optional per-step noise tensors (one per step, in execution order) to inject
                instead of drawing; the last step's entry is not used.
            condition: reference frames (`sorakit.diffusion.condition`); the model then gets `x_mask=`.
        """
        counter = CallCounter(model_fn)
        self.num_model_calls = 0
        x = z.to(compute_dtype(z.dtype))
        noise_iter = iter(noise) if noise is not None else None
        z0, cond, prev = x, (condition.to(x) if condition is not None else None), 1.0
        if cond is not None:
            x = cnd.start(z0, cond)
        for i in progress_iter(range(self.num_steps - 1, -1, -1), progress, self.num_steps, "iddpm"):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            x, kw, prev = self._enter(x, z0, cond, t, prev)
            out = self.p_mean_variance(counter, x, t, **kw)
            step_noise = next(noise_iter) if noise_iter is not None else None
            if i != 0 and step_noise is None:
                step_noise = randn_like(x, generator)
            x = ancestral_step(out["mean"], out["log_variance"], step_noise, last=i == 0)
            if cond is not None:
                x = cnd.hold(x, cond, kw["x_mask"])
            self.num_model_calls = counter.calls
            yield {**out, "sample": x, "t": t}

    def sample(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        noise: Iterable[torch.Tensor] | None = None,
        condition: cnd.Condition | None = None,
    ) -> torch.Tensor:
        """Run the whole ancestral loop from noise `z` [B, C, ...]; returns x_0 in z's dtype.
        With a `condition`, its hard frames come out equal to their reference latents."""
        final = z
        with torch.no_grad():
            for out in self.sample_progressive(model_fn, z, generator, progress, noise, condition):
                final = out["sample"]
        return final.to(z.dtype)

    # -- training -----------------------------------------------------------------------------
    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Uniform training timesteps (indices of this diffusion): int64 [batch_size]."""
        draw = generator.device if generator is not None else device
        t = torch.randint(0, self.num_steps, (batch_size,), generator=generator, device=draw)
        return t.to(device)

    def training_losses(
        self,
        model_fn: ModelFn,
        x_start: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        x_mask: torch.Tensor | None = None,
        channel_weights: torch.Tensor | None = None,
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Open-Sora 1.0's loss: MSE on eps + variational bound (bits) for the learned variance.

        Args:
            model_fn: `model_fn(x_t, t, **model_kwargs)` with original timesteps.
            x_start: clean latents [B, C, ...].
            t: indices [B] (drawn uniformly with `generator` if None).
            noise: [B, C, ...] (drawn with `generator` if None).
            x_mask: optional [B, T] bool over frames (dim 2), True = generate (Open-Sora 1.1): condition
                frames stay clean (t = 0 for them; upstream adds its t = 0 noise, std 0.01, here they are
                exactly the latents sampling holds them at), the model gets `x_mask=`, and MSE and bound
                average generated frames only.
            channel_weights: optional [C] weights of the latent channels in the MSE (rescaled to a mean of 1;
                the bound is unweighted).

        Returns:
            dict with loss, mse, vb (each [B]) and x_t.
        """
        if t is None:
            t = self.sample_timesteps(x_start.shape[0], generator, x_start.device)
        if noise is None:
            noise = randn_like(x_start, generator)
        x_t = self.q_sample(x_start, t, noise)
        if x_mask is not None:
            x_t = cnd.select_frames(x_mask, x_t, x_start)
            model_kwargs["x_mask"] = x_mask
        model_output = model_fn(x_t, self.model_timesteps(t), **model_kwargs)
        eps, v = split_prediction(model_output, x_start.shape[1])
        mse = masked_mean_flat(channel_weighted((noise - eps) ** 2, channel_weights), x_mask)
        if v is None:
            vb = torch.zeros_like(mse)
        else:
            # Learn the variance through the bound without letting it move the mean prediction.
            frozen = torch.cat([eps.detach(), v], dim=1)
            vb = self.vb_terms_bpd(x_start, x_t, t, frozen, x_mask)["output"]
        return {"loss": mse + vb, "mse": mse, "vb": vb, "x_t": x_t}

    def vb_terms_bpd(
        self,
        x_start: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_output: torch.Tensor,
        x_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One variational-bound term per sample, in bits: KL(q || p) for t > 0, decoder NLL at t = 0
        (averaged over the frames where `x_mask [B, T]` is True, if given).

        Returns: dict with output [B], and the true/model means and log-variances that entered it.
        """
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(None, x_t, t, clip_denoised=False, model_output=model_output)
        kl = normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
        kl = masked_mean_flat(kl, x_mask) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = masked_mean_flat(nll, x_mask) / math.log(2.0)
        return {
            "output": torch.where(t.to(kl.device) == 0, nll, kl),
            "true_mean": true_mean,
            "true_log_variance": true_log_variance,
            "p_mean": out["mean"],
            "p_log_variance": out["log_variance"],
        }

    def __repr__(self) -> str:
        return f"IDDPM(num_steps={self.num_steps}, num_timesteps={self.num_timesteps})"


class DDIM(IDDPM):
    """DDIM sampling on the same respaced schedule as `IDDPM` (same timesteps, same x_0 prediction).

    Written by hand rather than with diffusers' DDIMScheduler: that scheduler steps back by a fixed
    stride `num_train_timesteps // N`, which is wrong for `space_timesteps`' uneven strides (e.g.
    10/11 for N = 100), and Open-Sora's respaced schedule is what a checkpoint was sampled with.

    Args:
        num_sampling_steps: N.
        eta: 0 = deterministic DDIM (probability-flow ODE discretisation); 1 = DDPM-like noise.
        other arguments: as `IDDPM`.
    """

    name = "ddim"

    def __init__(self, num_sampling_steps: int | None = 50, eta: float = 0.0, **kwargs) -> None:
        super().__init__(num_sampling_steps=num_sampling_steps, **kwargs)
        self.eta = float(eta)

    def sample_progressive(
        self,
        model_fn: ModelFn,
        z: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = False,
        noise: Iterable[torch.Tensor] | None = None,
        condition: cnd.Condition | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        counter = CallCounter(model_fn)
        self.num_model_calls = 0
        x = z.to(compute_dtype(z.dtype))
        noise_iter = iter(noise) if noise is not None else None
        c = self.coef
        z0, cond, prev = x, (condition.to(x) if condition is not None else None), 1.0
        if cond is not None:
            x = cnd.start(z0, cond)
        for i in progress_iter(range(self.num_steps - 1, -1, -1), progress, self.num_steps, "ddim"):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            x, kw, prev = self._enter(x, z0, cond, t, prev)
            out = self.p_mean_variance(counter, x, t, **kw)
            # Re-derive eps from (possibly clipped) x_0 so that clipping stays consistent.
            eps = predict_eps_from_xstart(
                x,
                out["pred_xstart"],
                c.extract("sqrt_recip_alphas_cumprod", t, x),
                c.extract("sqrt_recipm1_alphas_cumprod", t, x),
            )
            acp = c.extract("alphas_cumprod", t, x)
            acp_prev = c.extract("alphas_cumprod_prev", t, x)
            sigma = ddim_sigma(acp, acp_prev, self.eta)
            step_noise = next(noise_iter) if noise_iter is not None else None
            if self.eta > 0 and i != 0 and step_noise is None:
                step_noise = randn_like(x, generator)
            x = ddim_step(
                out["pred_xstart"], eps, acp_prev, sigma, step_noise if (self.eta > 0 and i != 0) else None
            )
            if cond is not None:
                x = cnd.hold(x, cond, kw["x_mask"])
            self.num_model_calls = counter.calls
            yield {**out, "sample": x, "t": t}

    def __repr__(self) -> str:
        return f"DDIM(num_steps={self.num_steps}, eta={self.eta})"
