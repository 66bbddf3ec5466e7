"""Consistency models (004 Sec. 5.2; Song et al. 2023): consistency distillation (``cd``) and training (``ct``).

The model is a :class:`~diffprop.denoisers.ProcessDenoiser` with the ``cm`` parameterization: its x0 prediction is
the consistency function ``f_theta(x, t)``, with ``f(x, t_min) = x`` built in. On the discretisation
``t_min = t_1 < ... < t_N = t_max`` (Karras et al. 2022's rho = 7 grid, :meth:`Process.grid`) both losses are, per
example, ``lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^_{t_n}, t_n))`` (Song et al. 2023 Eq. 7, 10):

- ``cd``: ``x_{t_{n+1}} = alpha x0 + sigma z`` and ``x^_{t_n}`` one Euler or Heun step of the teacher's
  probability-flow ODE (004 Eq. 5.8) from it (Song et al. 2023 Alg. 2);
- ``ct``: no teacher: ``x^_{t_n} = alpha(t_n) x0 + sigma(t_n) z`` with the same ``z`` (Alg. 3, the unbiased estimate
  of the score from ``x0``).

``theta-`` is the target network, an EMA of the online weights with decay ``mu(k)`` kept by :class:`TargetNetwork`
(separate from the trainer's sampling EMA ``train.ema_decay``, as in Song et al. 2023, who sample from the latter).
The trainer drives it through :class:`~diffprop.losses.objective.Objective`'s ``target`` hook: ``attach`` when the
model is built, ``update(step)`` after each optimizer step, and its tensors in every checkpoint. ``N(k)`` and
``mu(k)`` follow one of three schedules:

- ``fixed``: ``N`` grid points and a constant ``mu`` (Song et al. 2023's CD: N = 18, mu = 0.95);
- ``increasing``: ``N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1``, ``mu(k) = exp(s0 log mu0 /
  N(k))`` (Song et al. 2023 App. C, their CT: s0 = 2, s1 = 150, mu0 = 0.9);
- ``doubling``: ``N(k) = min(s0 2^floor(k / K'), s1) + 1``, ``K' = floor(K / (log2 floor(s1 / s0) + 1))``, ``mu =
  0`` (the target is the stop-gradient online network; Song & Dhariwal 2023 Sec. 3.2-3.4, s0 = 10, s1 = 1280), with
  their pseudo-Huber distance ``sqrt(|x - y|^2 + c^2) - c``, ``c = 0.00054 sqrt(D)``, log-normal index sampling
  (``p(n) ~ erf((log sigma_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_n - P_mean) / (sqrt 2 P_std))``) and
  weights ``lambda(sigma_n) = 1 / (sigma_{n+1} - sigma_n)``.

Noise levels ``sigma`` are read in the VE view ``sigma~ = sigma / alpha`` so that every process works; with EDM they
are its times.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from ..denoisers import DenoiserBase, ProcessDenoiser, eps_x0
from ..errors import DiffpropError
from ..samplers.ode import ode_drift

SCHEDULES = ("fixed", "increasing", "doubling")
SOLVERS = ("heun", "euler")
DISTANCES = ("l2", "pseudo-huber")
INDEX_SAMPLERS = ("uniform", "lognormal")
WEIGHTINGS = ("uniform", "ict")
# each schedule's paper values: (s0, s1, mu or mu0, index sampler, weighting, distance)
PRESETS = {"fixed": (18, 18, 0.95, "uniform", "uniform", "l2"),  # Song et al. 2023 Tab. 3 (CD, CIFAR-10)
           "increasing": (2, 150, 0.9, "uniform", "uniform", "l2"),  # Song et al. 2023 Tab. 3 (CT, CIFAR-10)
           "doubling": (10, 1280, 0.0, "lognormal", "ict", "pseudo-huber")}  # Song & Dhariwal 2023 Sec. 3


def num_points(schedule: str, k: int, K: int, s0: int, s1: int) -> int:
    """``N(k)``, the number of discretisation points at training step ``k`` of ``K``."""
    if schedule == "fixed":
        return s1
    if schedule == "increasing":  # Song et al. 2023 App. C
        return math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1) + 1
    k_prime = math.floor(K / (math.log2(math.floor(s1 / s0)) + 1))  # Song & Dhariwal 2023 Eq. 8
    return min(s0 * 2 ** math.floor(k / max(k_prime, 1)), s1) + 1


def target_decay(schedule: str, n: int, s0: int, mu: float) -> float:
    """``mu(k)`` at ``N(k) = n``: ``mu`` (fixed), ``exp(s0 log mu0 / N(k))`` (increasing), 0 (doubling)."""
    if schedule == "increasing":
        return math.exp(s0 * math.log(mu) / n) if mu > 0 else 0.0
    return 0.0 if schedule == "doubling" else mu


class TargetNetwork:
    """The target ``theta-``: a frozen copy of the online denoiser whose weights follow ``theta- <- mu theta- + (1 -
    mu) theta`` after every optimizer step (Song et al. 2023 Alg. 2-3, last line); ``k`` is the step the next loss is
    evaluated at."""

    def __init__(self, decay):
        self.decay, self.k = decay, 0  # decay(k) -> mu after step k
        self.denoiser: DenoiserBase | None = None
        self._pairs: list = []

    def attach(self, denoiser: DenoiserBase) -> None:
        """Copy ``denoiser`` (unwrapped, before any distributed wrapper) as the target and pair its weights with the
        online ones."""
        self.denoiser = copy.deepcopy(denoiser).requires_grad_(False).eval()
        live, own = denoiser.net.state_dict(), self.denoiser.net.state_dict()
        self._pairs = [(own[k], live[k]) for k in own]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.denoiser.net.state_dict()

    def load_state_dict(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        self.denoiser.net.load_state_dict(tensors)
        self.k = step

    @torch.no_grad()
    def update(self, step: int) -> None:
        mu = self.decay(step - 1)
        for e, p in self._pairs:
            if e.is_floating_point():
                e.lerp_(p, 1 - mu)
            else:
                e.copy_(p)
        self.k = step


class OnProcess(DenoiserBase):
    """A teacher trained on another process, read on ``process``: at time ``t`` it is asked at its own time of the
    same log-SNR, with the input rescaled by the ratio of the two ``alpha``s (the same ``x~ = x / alpha``)."""

    schedule = None

    def __init__(self, teacher: DenoiserBase, process):
        super().__init__()
        self.teacher, self._process = teacher, process

    @property
    def process(self):
        return self._process

    def predict(self, x_t, t, generator=None):
        t = torch.as_tensor(t, dtype=torch.float64, device=x_t.device).expand(x_t.shape[0])
        own = self.teacher.process
        t_own = own.time_at_log_snr(self.process.log_snr(t.cpu())).to(x_t.device)
        a_own, a = own.coefficients(t_own, x_t)[0].sqrt(), self.process.coefficients(t, x_t)[0].sqrt()
        x0 = self.teacher.predict(a_own / a * x_t, t_own, generator).x0
        return eps_x0(self.process, x_t, t, x0=x0)


def load_teacher(cfg, process, device) -> DenoiserBase:
    """The CD teacher named by ``cm.teacher`` on the student's ``process``: ``oracle`` (the exact denoiser of the
    Gaussian-mixture dataset ``data.name``) or a run folder trained on the same dataset (its EMA weights)."""
    from ..data import load_dataset
    from ..oracle import OracleDenoiser
    from ..runs import load_run

    name = cfg.cm.teacher
    if name == "oracle":
        mixture = load_dataset(cfg.data.name, num_samples=2, seed=cfg.seed).mixture
        if mixture is None:
            raise DiffpropError(f"config: cm.teacher = 'oracle' needs a Gaussian-mixture dataset, not "
                                f"data.name = {cfg.data.name!r}; name a trained run folder instead")
        return OracleDenoiser(mixture, process)
    if not (Path(name) / "config.toml").is_file():
        raise DiffpropError(f"config: cm.teacher = {name!r} is neither 'oracle' nor a diffprop run folder (no "
                            f"config.toml); train the teacher first")
    run = load_run(name, device=device)
    if run.data["name"] != cfg.data.name:
        raise DiffpropError(f"config: cm.teacher {name!r} was trained on {run.data['name']!r}, not data.name = "
                            f"{cfg.data.name!r}")
    return OnProcess(run.denoiser.requires_grad_(False), process)


class ConsistencyLoss:
    """Per example ``lambda(t_n) d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta-(x^_{t_n}, t_n))``; ``teacher_step`` is None
    for consistency training."""

    distill = False

    def __init__(self, cfg, steps: int, schedule: str, s0: int, s1: int, mu: float, index: str, weighting: str,
                 distance: str, huber_c: float | None, p_mean: float, p_std: float, solver: str = "heun"):
        self.cfg, self.K, self.schedule, self.s0, self.s1 = cfg, steps, schedule, s0, s1
        self.index, self.weighting, self.distance, self.huber_c = index, weighting, distance, huber_c
        self.p_mean, self.p_std, self.solver = p_mean, p_std, solver
        self.target = TargetNetwork(lambda k: target_decay(schedule, self.n_points(k), s0, mu))
        self.teacher: DenoiserBase | None = None
        self._grids: dict = {}

    @classmethod
    def from_config(cls, cfg) -> "ConsistencyLoss":
        c = cfg.cm
        if cfg.diffusion.parameterization != "cm":
            raise DiffpropError(f"config: objective.loss = {cfg.objective.loss!r} trains a consistency model: it needs "
                                f"diffusion.parameterization = 'cm', not {cfg.diffusion.parameterization!r}")
        schedule = c.schedule or ("fixed" if cls.distill else "doubling")
        s0, s1, mu, index, weighting, distance = PRESETS[schedule]
        s1 = c.n_max or s1
        s0 = s1 if schedule == "fixed" else c.n_min or s0  # fixed: N = n_max throughout
        if not 2 <= s0 <= s1:
            raise DiffpropError(f"config: cm.n_min ({s0}) and cm.n_max ({s1}) need 2 <= n_min <= n_max")
        return cls(cfg, c.horizon or cfg.train.steps, schedule, s0, s1, mu if c.mu is None else c.mu, c.index or index,
                   c.weighting or weighting, c.distance or distance, c.huber_c, c.p_mean, c.p_std, c.solver)

    def attach(self, denoiser) -> None:
        """Called by the trainer with its (unwrapped) denoiser: the target copy, and the teacher on its process."""
        if not (isinstance(denoiser, ProcessDenoiser) and denoiser.parameterization == "cm"):
            raise DiffpropError("the consistency losses train a continuous-time denoiser with the cm parameterization")
        self.target.attach(denoiser)
        if self.distill:
            device = next(denoiser.net.parameters()).device
            self.teacher = load_teacher(self.cfg, denoiser.process, device)

    def n_points(self, k: int) -> int:
        return num_points(self.schedule, k, self.K, self.s0, self.s1)

    def grid(self, process, n: int) -> torch.Tensor:
        """``t_1 < ... < t_N``: Karras et al.'s rho = 7 grid in ``sigma~`` (increasing, float64)."""
        if n not in self._grids:
            self._grids[n] = process.grid(n, "edm")[:-1].flip(0)
        return self._grids[n]

    def draw_index(self, sig: torch.Tensor, b: int, generator) -> torch.Tensor:
        """``n`` in ``0..N-2`` (the pair ``t_n, t_{n+1}``), uniform or log-normal (Song & Dhariwal 2023 Eq. 9)."""
        if self.index == "uniform":
            return torch.randint(0, len(sig) - 1, (b,), generator=generator, device=generator.device)
        cdf = torch.erf((sig.log() - self.p_mean) / (math.sqrt(2) * self.p_std))
        p = (cdf[1:] - cdf[:-1]).clamp(min=0).to(generator.device)
        return torch.multinomial(p.float(), b, replacement=True, generator=generator)

    def d(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sq = (a - b).flatten(1).pow(2).sum(1)  # Song et al. 2023 Sec. 3: d = |x - y|_2^2
        if self.distance == "l2":
            return sq
        c = self.huber_c if self.huber_c is not None else 0.00054 * math.sqrt(a[0].numel())  # Song & Dhariwal Sec. 3.3
        return (sq + c * c).sqrt() - c

    def teacher_step(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, generator) -> torch.Tensor:
        """One Euler or Heun step of the teacher's probability-flow ODE between per-sample times (Song et al. 2023
        Eq. 6, Karras et al. 2022 Alg. 1 lines 6-8), on the drift of :func:`~diffprop.samplers.ode.ode_drift`."""
        h = (t_next - t).reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        d = ode_drift(self.teacher, x, t, generator)
        x_next = x + h * d
        if self.solver == "euler":
            return x_next
        return x + h / 2 * (d + ode_drift(self.teacher, x_next, t_next, generator))

    def __call__(self, denoiser, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        proc = denoiser.process
        ts = self.grid(proc, self.n_points(self.target.k))
        a2, s2 = proc.alpha2(ts), proc.sigma2(ts)
        sig = (s2 / a2).sqrt()  # sigma~ at t_1..t_N
        n = self.draw_index(sig, x0.shape[0], generator).cpu()
        t_n, t_n1 = ts[n].to(x0.device), ts[n + 1].to(x0.device)
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_n1 = proc.marginal(x0, t_n1, z)
        with torch.no_grad():
            x_n = self.teacher_step(x_n1, t_n1, t_n, generator) if self.distill else proc.marginal(x0, t_n, z)
            target = self.target.denoiser.predict(x_n, t_n, generator).x0
        weight = 1 / (sig[n + 1] - sig[n]) if self.weighting == "ict" else torch.ones(len(n), dtype=torch.float64)
        return weight.to(x0.device, x0.dtype) * self.d(denoiser.predict(x_n1, t_n1, generator).x0, target)


class ConsistencyDistillation(ConsistencyLoss):
    """``cd``: consistency distillation from ``cm.teacher`` (Song et al. 2023 Alg. 2)."""

    distill = True


class ConsistencyTraining(ConsistencyLoss):
    """``ct``: consistency training without a teacher (Song et al. 2023 Alg. 3; Song & Dhariwal 2023)."""
