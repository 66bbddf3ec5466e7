"""Typed run configuration: TOML in, validated dataclasses, TOML out. Configs are data, never evaluated.

Every field carries its rule (type, allowed values, range) in its metadata, so one validator checks
them all and every error names the key and what is allowed. TOML has no null: a field typed ``X | None`` defaults to
None, "the preset", and a missing key means just that (such keys are left out of a written config); run folders
written before 2026-12, where 0 meant the preset, read as the key left out (:data:`ZERO_WAS_PRESET`). Allowed names come from the registries (processes, samplers, time samplers,
parameterizations, regularizers).
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from .denoisers import PROCESS_PARAMETERIZATIONS
from .errors import DiffpropError
from .limits import MAX_INT, MAX_SAMPLES, MAX_SEED
from .losses.objective import DISCRETE_ONLY, LOSSES, REGISTRY
from .losses.consistency_models import (DISTANCES as CM_DISTANCES, INDEX_SAMPLERS as CM_INDEX,
                                       SCHEDULES as CM_SCHEDULES, SOLVERS as CM_SOLVERS, WEIGHTINGS as CM_WEIGHTINGS)
from .losses.score_matching import MAX_DIM as SM_MAX_DIM, PROJECTIONS as SM_PROJECTIONS, WEIGHTINGS as SM_WEIGHTINGS
from .names import ALIASES, RENAMED, SPACINGS
from .processes import GRIDS, PROCESS_CONFIGS, PROCESSES
from .samplers import SAMPLERS
from .schedules import SCHEDULES, linear_range
from .time_sampling import TIME_SAMPLERS, default_time_sampler

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _f(default, doc: str, **rule):
    return field(default=default, metadata={"doc": doc, **rule})


@dataclass
class DataConfig:
    name: str = _f("gmm-grid", "dataset: gmm-grid, gmm-ring, swiss-roll, moons, digits, image-folder:PATH, "
                   "cifar10:PATH, npz:PATH, csv:PATH", dataset=True)
    num_samples: int = _f(20000, "number of points generated for toy datasets", min=1, max=10**7)
    image_size: int | None = _f(None, "resize/crop images to this size (absent: native size)", min=1, max=2048)


@dataclass
class DiffusionConfig:
    T: int = _f(1000, "number of diffusion steps", min=1, max=100000)
    schedule: str = _f("linear", "beta schedule: linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021; diffusers' "
                       "squaredcos_cap_v2), sigmoid_abar (Jabri et al. 2022, the EPDM and SMD public code's sigmoid)",
                       choices=SCHEDULES)
    beta_start: float | None = _f(None, "first beta of the linear schedule, used as given (absent: Ho et al.'s 1e-4 "
                                  "scaled by 1000 / T)", gt=0.0, lt=1.0)
    beta_end: float | None = _f(None, "last beta of the linear schedule, used as given (absent: Ho et al.'s 0.02 "
                                "scaled by 1000 / T, so that any T ends near N(0, I))", gt=0.0, lt=1.0)
    parameterization: str = _f("eps", "what the network predicts (diffusers' prediction_type epsilon, sample, "
                               "v_prediction are accepted; v needs a variance-preserving process; edm: Karras et al. "
                               "2022's preconditioning, continuous-time processes only)",
                               choices=PROCESS_PARAMETERIZATIONS)
    var_type: str = _f("beta", "backward variance sigma_t^2 (Li & van der Schaar 2024 use beta; diffusers' "
                       "variance_type fixed_large = beta, fixed_small = beta_tilde are accepted)",
                       choices=("beta", "beta_tilde"))
    process: str = _f("discrete", "noise process: discrete (the DDPM chain of T, schedule, beta_*), vp-sde, subvp-sde, "
                      "ve-sde (Song et al. 2021, score SDE), edm (Karras et al. 2022)", choices=tuple(PROCESSES))
    beta_min: float | None = _f(None, "vp-sde, subvp-sde: beta(0) (absent: 0.1)", gt=0.0)
    beta_max: float | None = _f(None, "vp-sde, subvp-sde: beta(1) (absent: 20)", gt=0.0)
    sigma_min: float | None = _f(None, "ve-sde: sigma as t -> 0 (absent: 0.01); edm: the smallest sigma (absent: "
                                 "0.002)", gt=0.0)
    sigma_max: float | None = _f(None, "ve-sde: sigma(1) (absent: the data's largest pairwise distance, Song & Ermon "
                                 "2020); edm: the largest sigma (absent: 80)", gt=0.0)
    sigma_data: float | None = _f(None, "edm: the data's std in its preconditioning (absent: the training data's)",
                                  gt=0.0)
    t_min: float | None = _f(None, "vp-sde, subvp-sde, ve-sde: the smallest time sampled and trained (absent: 1e-3 "
                             "VP, 1e-5 VE)", gt=0.0, lt=1.0)
    time_sampler: str | None = _f(None, "how training draws t: uniform-int (t ~ U{1..T}), uniform, log-normal (Karras "
                                  "et al. 2022), log-uniform (absent: uniform-int for discrete, log-normal for edm, "
                                  "uniform otherwise)", choices=tuple(TIME_SAMPLERS))


@dataclass
class ModelConfig:
    kind: str = _f("mlp", "backbone: mlp for vector data, unet for images", choices=("mlp", "unet"))
    width: int = _f(256, "MLP hidden width", min=1, max=65536)
    depth: int = _f(4, "MLP residual blocks", min=1, max=1024)
    time_dim: int = _f(128, "MLP sinusoidal time-embedding size", min=2, max=65536)
    dropout: float | None = _f(None, "dropout probability (absent: none for the MLP, the preset's own for the U-Net)",
                               min=0.0, lt=1.0)
    preset: str = _f("tiny", "U-Net preset", choices=("tiny", "small", "ddpm-cifar10"))
    smd: bool = _f(False, "soft mixture denoising around the backbone (Li, van Breugel & van der Schaar 2024, Sec. 4), "
                   "set up in [smd]")


@dataclass
class SMDConfig:
    """Soft mixture denoising (002 Sec. 4, Alg. 1-2), on with ``model.smd = true``; see diffprop.nets.smd."""
    variant: str = _f("official", "official: the public code's per-pixel latent and hypernet blocks after the first "
                      "and before the last layer; embedding: one latent per example modulating the time embedding "
                      "(far cheaper)", choices=("official", "embedding"))
    latent_dim: int = _f(16, "size of the latent z_t (per pixel for official on images; the public code uses 100)",
                         min=1, max=4096)
    hyper_layers: int = _f(2, "official: matrices u u^T + softplus(s) I per hypernet block (the public code: 2)",
                           min=1, max=64)
    eta_dim: int = _f(16, "embedding: size of eta (official: eta is shaped like x_t)", min=1, max=4096)
    g_width: int | None = _f(None, "width of g_xi: U-Net channels (official on images; a multiple of 4) or MLP units "
                             "(absent: a quarter of the backbone's, at least 8 channels or 16 units)", min=1,
                             max=65536)
    n_eta: int = _f(1, "eta draws per training example, their losses averaged (Li, van Breugel & van der Schaar "
                    "2024, Alg. 1, Fig. 4; cost grows linearly)", min=1, max=1024)
    loss: str = _f("mse", "mse: Li, van Breugel & van der Schaar 2024, Eq. 14: the squared error averaged over eta "
                   "draws (its minimiser ignores eta: "
                   "see diffprop.nets.smd); energy: the energy score of the n_eta >= 2 draws, which rewards a spread "
                   "over eta that matches the posterior's (not in that paper); mixture: the cross-entropy of the "
                   "backward step's mixture over the n_eta draws (beta_tilde components; an importance-weighted bound "
                   "that tightens with n_eta; equals mse for n_eta = 1; see diffprop.losses.smd_mixture)",
                   choices=("mse", "energy", "mixture"))


@dataclass
class TrainConfig:
    steps: int = _f(10000, "optimizer steps", min=1)
    batch_size: int = _f(256, "global batch size", min=1)
    lr: float = _f(1e-3, "AdamW learning rate (0: the weights stay as they are, e.g. to check an --init-from)",
                   min=0.0, max=1e30)  # AdamW's float32 step lr / (1 - beta1) overflows from 3.4e37
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0.0)
    warmup_steps: int = _f(100, "linear learning-rate warm-up steps", min=0)
    lr_schedule: str = _f("constant", "after warm-up: constant, or cosine decay to 0 at train.steps",
                          choices=("constant", "cosine"))
    grad_clip: float = _f(1.0, "max gradient norm (0: no clipping)", min=0.0)
    ema_decay: float = _f(0.999, "EMA decay", min=0.0, max=1.0)
    ema_warmup: bool = _f(True, "EMA decay min(decay, (1 + step) / (10 + step))")
    mixed_precision: str = _f("auto", "autocast precision (auto: accelerate's, from `accelerate launch "
                              "--mixed_precision` or `accelerate config`; no otherwise)",
                              choices=("no", "auto", "fp16", "bf16"))
    grad_accum: int = _f(1, "gradient accumulation: micro-batches per optimizer step (batch_size / processes must be "
                         "divisible by it); the same gradient as one batch for per-example losses", min=1)
    log_with: str = _f("none", "also log through accelerate's tracker (tensorboard: needs the package; into "
                       "RUN_DIR/trackers), beside log.jsonl", choices=("none", "tensorboard"))
    device: str = _f("auto", "auto, cpu or cuda", choices=("auto", "cpu", "cuda"))
    checkpoint_every: int = _f(1000, "steps between checkpoints", min=1)
    keep_last: int = _f(3, "checkpoints kept", min=1)
    log_every: int = _f(50, "steps between log.jsonl lines", min=1)
    log_grad_norms: bool = _f(False, "on each log.jsonl line, the gradient norm of each part of the loss (the main "
                              "loss and each weighted regularizer; one extra backward per part on those steps only)")
    time_budget: float | None = _f(None, "stop after this many seconds of training (absent: no limit; for "
                                   "equal-budget comparisons)", gt=0.0)


REGULARIZERS = tuple(REGISTRY)


@dataclass
class ObjectiveConfig:
    loss: str = _f("denoising", "the main loss: " + ", ".join(LOSSES) + " (denoising: the denoiser's regression "
                   "target, Ho et al. 2020 Eq. 14 and its continuous-time forms)", choices=tuple(LOSSES))
    lambda_nl: float = _f(1.0, "weight of the denoising loss (lambda_nl of Li & van der Schaar 2024, Eq. 15; they "
                          "use 0.8)",
                          min=0.0)
    regularizers: list = _f((), "regularizers added to the loss, each weighted by its section's `weight`: "
                            + ", ".join(REGULARIZERS), each=REGULARIZERS)


@dataclass
class EPDMConfig:
    """000 Sec. 5 / App. F. ``preset`` fills every field left out (numbers) or at "preset" (names)."""
    preset: str = _f("paper", "paper (the text of Li & van der Schaar 2024) or official (the public code)",
                     choices=("paper", "official"))
    weight: float | None = _f(None, "lambda_reg (absent: the preset's: paper 0.2, official 1.0)", min=0.0)
    L: int | None = _f(None, "max bootstrapping steps s - t (absent: the preset's 5)", min=1)
    rho: float | None = _f(None, "time-weight rate, w_t ~ exp(rho (T - t)) (absent: the preset's 0.003; 0: uniform)",
                           min=0.0)
    time_weights: str = _f("preset", "T_wt: T * normalised w_t (mean 1), literal: normalised w_t (sums to 1 over "
                           "T, about 1/T of the loss), uniform: 1", choices=("preset", "T_wt", "literal", "uniform"))
    init: str = _f("preset", "warm: x_s = q_sample(x_0', s) (Li & van der Schaar 2024, Eq. 16); random: x_s ~ N(0, I) "
                   "(ablation)",
                   choices=("preset", "warm", "random"))
    kernel: str = _f("preset", "MMD kernel, optionally KERNEL@BANDWIDTH (paper: rbf; official: rbf-mix with "
                     "mean-distance bandwidth)")
    estimator: str = _f("preset", "unbiased or biased (Li & van der Schaar 2024, Eq. 13 as printed; official)",
                        choices=("preset", "unbiased", "biased"))
    grad: str = _f("preset", "gradient through every chain step (all; official) or the last step only (last)",
                   choices=("preset", "all", "last"))
    warm_batch: str = _f("preset", "where the warm-start examples S_0' come from: second (an independent second "
                         "batch, paper) or half (the batch split in halves, official)",
                         choices=("preset", "second", "half"))


@dataclass
class ConsistencyConfig:
    """Consistent Diffusion Models (003 Sec. 4), as the public code does it."""
    weight: float = _f(1.0, "lambda (the public code's is on the EDM scale; why 1.0 here, and 0.1 for t_dist = "
                       "uniform: the docstring of diffprop.losses.consistency)", min=0.0)
    steps: int = _f(5, "reverse steps from t down to t' (no gradient on the path)", min=1)
    window: int = _f(20, "t' is drawn in [t - window, t - 1]", min=1)
    t_dist: str = _f("edm", "how t is drawn: edm = the public code's noise levels (EDM's sigma ~ logN(-1.2, 1.2) in "
                     "x0 units, mapped onto the chain), uniform = t ~ U{2..T}", choices=("edm", "uniform"))


@dataclass
class InputPerturbationConfig:
    """ADM-IP (Ning et al. 2023): train on x_t built from eps + gamma xi, target eps."""
    weight: float = _f(1.0, "weight of the input-perturbed denoising loss", min=0.0)
    gamma: float = _f(0.1, "perturbation scale (0.15 for CIFAR-10 in the paper)", min=0.0)


@dataclass
class FokkerPlanckConfig:
    """FP-Diffusion (Lai et al. 2022): the score Fokker-Planck residual of the VP SDE."""
    form: str = _f("literal", "literal: the public code's penalty g^2 |err|^2 / D^2 (its residual grows like "
                   "sigma_t^-3 at small t); fixed: the residual in denoising-loss units, (2 sigma_t^3 / g^2)^2 "
                   "|err|^2 / D, without the scalar part (see diffprop.losses.fokker_planck)",
                   choices=("literal", "fixed"))
    weight: float | None = _f(None, "overall weight of the FP penalty (absent: literal 0.005, fixed 1; at 1 the "
                              "literal form's zero score, which satisfies the FP equation exactly, wins: learning "
                              "stalls on gmm-grid; 0.005 measured to train)", min=0.0)
    alpha: float = _f(0.15, "weight of the squared residual", min=0.0)
    beta: float | None = _f(None, "weight of the absolute right-hand side (absent: literal 0.01, fixed 0)", min=0.0)
    t_min: int | None = _f(None, "smallest timestep the residual is drawn at (absent: 1 + dt)", min=1)
    divergence: str = _f("auto", "exact (low dimension), hutchinson (one probe), auto: exact when D <= 8",
                         choices=("auto", "exact", "hutchinson"))
    dt: int = _f(1, "timestep offset of the 3-point finite difference in t", min=1)


@dataclass
class ChainMMDConfig:
    """The chain-started cumulative regularizer (diffprop.losses.chain_mmd): MMD^2 between the model's own sampling
    chain, a replay buffer advanced L steps per training step from x_T, and q_t."""
    weight: float = _f(50.0, "its weight in the loss (50: calibrated on gmm-grid so that its gradient norm is "
                       "comparable to the denoising loss's, docs/results.md)", min=0.0)
    L: int = _f(5, "DDPM steps the buffer's chain advances per training step", min=1)
    grad: str = _f("last", "gradient through the last chain step only (last) or every step of it (all)",
                   choices=("last", "all"))
    time_weights: str = _f("log_uniform", "the target law of t, reached by importance weights over the chain's "
                           "visits: log_uniform (p(t) ~ 1/t, toward small t), uniform",
                           choices=("log_uniform", "uniform"))
    scales: int = _f(4, "RBF bandwidths, geometric from the mode scale (median nearest-neighbour distance of the "
                     "forward samples at t) to the median distance between the chain and them (1: the mode scale "
                     "only)", min=1, max=64)
    particles: int | None = _f(None, "chain particles in the buffer (absent: a quarter of the batch per process, "
                               "which keeps its cost near 2 x a plain step; compared with all of the batch's forward "
                               "samples)", min=2)


@dataclass
class ChainDenoiseConfig:
    """Denoising at the model's own chain states (diffprop.losses.chain_denoise): the network regressed on the
    empirical data's denoiser at the states of its DDPM chain, a replay buffer advanced L steps per training step."""
    weight: float = _f(1.0, "its weight in the loss (its mean square is in the denoising loss's units)", min=0.0)
    L: int = _f(5, "DDPM steps the buffer's chain advances per training step (without gradients)", min=1)
    time_weights: str = _f("log_uniform", "the target law of t, reached by importance weights over the chain's "
                           "visits: log_uniform (p(t) ~ 1/t, toward small t), uniform",
                           choices=("log_uniform", "uniform"))
    particles: int | None = _f(None, "chain particles in the buffer (absent: a quarter of the batch per process)",
                               min=2)
    reference: int = _f(4096, "fresh training examples per step whose empirical posterior mean E[x_0 | x_t] is the "
                        "target", min=1, max=10**6)
    min_ess: float = _f(1.0, "drop the chain states whose target averages fewer training examples than this "
                        "(effective sample size of the posterior weights; 1 keeps all; on images, where the target "
                        "otherwise memorises at small t, e.g. 4)", min=1.0)


@dataclass
class ScoreMatchingConfig:
    """The score-matching losses (``objective.loss`` = dsm, ssm, ssm-vr, ism; diffprop.losses.score_matching)."""
    weighting: str = _f("sigma2", "lambda(t): sigma2 = sigma(t)^2 (Song et al. 2021, score SDE; with eps prediction "
                        "dsm is then the denoising loss), g2 = g(t)^2 of the forward SDE (the likelihood weighting of "
                        "Song et al. 2021, maximum likelihood training), uniform = 1", choices=SM_WEIGHTINGS)
    projections: int = _f(1, "ssm, ssm-vr: random projections per example (Song et al. 2019)", min=1, max=1024)
    projection_dist: str = _f("gaussian", "ssm, ssm-vr: distribution of the projections", choices=SM_PROJECTIONS)
    max_dim: int = _f(SM_MAX_DIM, "ism: the largest data dimension it accepts (its exact Jacobian trace costs one "
                      "backward pass per dimension)", min=1, max=65536)


@dataclass
class CMConfig:
    """Consistency models (``objective.loss`` = cd, ct; diffprop.losses.consistency_models; Song et al. 2023). Not
    the [consistency] regularizer, which is Daras et al. 2023's."""
    teacher: str = _f("oracle", "cd: the teacher, oracle (the exact denoiser of a Gaussian-mixture data.name) or the "
                      "path of a run folder trained on data.name (its EMA weights)")
    solver: str = _f("heun", "cd: the teacher's probability-flow ODE step between adjacent grid times",
                     choices=CM_SOLVERS)
    schedule: str | None = _f(None, "N(k) and the target decay mu(k): fixed (Song et al. 2023's CD), increasing (their "
                              "CT), doubling (Song & Dhariwal 2023, mu = 0) (absent: fixed for cd, doubling for ct)",
                              choices=CM_SCHEDULES)
    n_min: int | None = _f(None, "increasing, doubling: s0, the grid points at step 0 (absent: the schedule's: 2, "
                           "10)", min=2)
    n_max: int | None = _f(None, "s1, the most grid points, fixed's N (absent: the schedule's: 18, 150, 1280)", min=2)
    horizon: int | None = _f(None, "K, the step count N(k) and mu(k) are scheduled over (absent: train.steps; set it "
                             "when a resume will change train.steps)", min=1)
    mu: float | None = _f(None, "target EMA decay, increasing's mu0 (absent: the schedule's: 0.95, 0.9, 0)", min=0.0,
                          lt=1.0)
    distance: str | None = _f(None, "d(x, y): l2 = |x - y|^2, pseudo-huber = sqrt(|x - y|^2 + c^2) - c (absent: "
                              "pseudo-huber for doubling, l2 otherwise)", choices=CM_DISTANCES)
    huber_c: float | None = _f(None, "pseudo-huber's c (absent: 0.00054 sqrt(D), Song & Dhariwal 2023)", gt=0.0)
    index: str | None = _f(None, "how the grid pair n is drawn: uniform, lognormal (Song & Dhariwal 2023) (absent: "
                           "lognormal for doubling, uniform otherwise)", choices=CM_INDEX)
    p_mean: float = _f(-1.1, "lognormal index: mean of log sigma")
    p_std: float = _f(2.0, "lognormal index: std of log sigma", gt=0.0)
    weighting: str | None = _f(None, "lambda(sigma_n): uniform = 1, ict = 1 / (sigma_{n+1} - sigma_n) (absent: ict for "
                               "doubling, uniform otherwise)", choices=CM_WEIGHTINGS)


@dataclass
class SampleConfig:
    sampler: str = _f("ddpm", "sampler: " + "; ".join(f"{k}: {v.about}" for k, v in SAMPLERS.items()),
                      choices=tuple(SAMPLERS))
    steps: int | None = _f(None, "sampling steps (absent: the sampler's default: T for ddpm, 50 for ddim, 25 for "
                           "heun, ...)", min=1)
    num: int = _f(2000, "number of samples", min=1, max=MAX_SAMPLES)
    eta: float = _f(0.0, "DDIM stochasticity", min=0.0)
    batch_size: int | None = _f(None, "sampling batch size (absent: all at once)", min=1)
    clip_x0: float | None = _f(None, "clip predicted x0 to [-c, c] (absent: 1 for images, off otherwise)", gt=0.0)
    clipped_eps: bool = _f(False, "ddim: with clipping, use the noise implied by the clipped x0 "
                                  "(diffusers' use_clipped_model_output) instead of the model's")
    spacing: str | None = _f(None, "time grid (absent: the sampler's default on its process, e.g. even for ddpm "
                             "and quadratic for ddim on the discrete chain): even = round(linspace(1, T, steps)); "
                             "linspace, leading, trailing = diffusers' timestep_spacing (discrete chain only); "
                             "uniform, quadratic, edm (Karras et al. 2022's rho = 7)", choices=(*SPACINGS, *GRIDS))


@dataclass
class Config:
    seed: int = _f(0, "seed of every random choice in the run (numpy, behind the toy datasets, takes 32 bits)", min=0,
                   max=MAX_SEED)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    epdm: EPDMConfig = field(default_factory=EPDMConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    input_perturbation: InputPerturbationConfig = field(default_factory=InputPerturbationConfig)
    fokker_planck: FokkerPlanckConfig = field(default_factory=FokkerPlanckConfig)
    chain_mmd: ChainMMDConfig = field(default_factory=ChainMMDConfig)
    chain_denoise: ChainDenoiseConfig = field(default_factory=ChainDenoiseConfig)
    score_matching: ScoreMatchingConfig = field(default_factory=ScoreMatchingConfig)
    cm: CMConfig = field(default_factory=CMConfig)
    smd: SMDConfig = field(default_factory=SMDConfig)
    version: int = _f(2, "config format (absent: 1, written before 2026-12, where 0 meant the preset in the keys of "
                      "diffprop.config.ZERO_WAS_PRESET)", min=1, max=2)

    def to_dict(self) -> dict:
        """The config as TOML data: None ("the preset") is left out, as TOML has no null."""
        d = dataclasses.asdict(self)
        d["objective"]["regularizers"] = list(d["objective"]["regularizers"])  # TOML arrays
        return {k: {n: v for n, v in sec.items() if v is not None} if isinstance(sec, dict) else sec
                for k, sec in d.items()}

    def dumps(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _shown(value: Any) -> str:
    """``value`` for a message: a huge integer by its first digits and length."""
    text = repr(value)
    return text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"


def _check(key: str, value: Any, f: dataclasses.Field) -> Any:
    """Type-check and range-check one value against its field's rule; returns the coerced value."""
    rule, typ = f.metadata, f.type.removesuffix(" | None")  # None is never read: TOML has no null
    if typ == "bool":
        if not isinstance(value, bool):
            raise DiffpropError(f"config: {key} must be true or false, got {value!r}")
        return value
    if typ == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DiffpropError(f"config: {key} must be an integer, got {value!r}")
        if "max" not in rule and not -MAX_INT <= value <= MAX_INT:  # TOML integers are unbounded (a max says more)
            raise DiffpropError(f"config: {key} must fit in 64 bits (|{key}| <= {MAX_INT}), got {_shown(value)}")
    elif typ == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DiffpropError(f"config: {key} must be a number, got {value!r}")
        if not (isinstance(value, float) or abs(value) <= MAX_INT) or not math.isfinite(value):
            raise DiffpropError(f"config: {key} must be a finite number, got {_shown(value)}")
        value = float(value)
    elif typ == "str" and not isinstance(value, str):
        raise DiffpropError(f"config: {key} must be a string, got {value!r}")
    elif typ == "list":
        if not isinstance(value, (list, tuple)):
            raise DiffpropError(f"config: {key} must be a list, got {value!r}")
        bad = [v for v in value if v not in rule.get("each", ())]
        if bad:
            raise DiffpropError(f"config: {key} has {bad[0]!r}; allowed: {', '.join(rule['each'])}")
        if len(set(value)) != len(value):
            raise DiffpropError(f"config: {key} lists {value!r}; each entry at most once")
        return tuple(value)
    if isinstance(value, str):
        value = ALIASES.get(key, {}).get(value, value)
        if value in RENAMED.get(key, {}):
            raise DiffpropError(f"config: {key} = {value!r} is ambiguous: {RENAMED[key][value][1]}")
    if "choices" in rule and value not in rule["choices"]:
        raise DiffpropError(f"config: {key} = {value!r} is not allowed; allowed: {', '.join(rule['choices'])}")
    if rule.get("dataset"):
        from .data import DATASET_NAMES  # the dataset registry is data's; imported lazily (it pulls sklearn)
        base = value.split(":", 1)[0] + (":PATH" if ":" in value else "")
        if base not in DATASET_NAMES:
            raise DiffpropError(f"config: {key} = {value!r} is not a dataset; allowed: {', '.join(DATASET_NAMES)}")
    bounds = [("min", lambda a, b: a >= b, ">="), ("max", lambda a, b: a <= b, "<="),
              ("gt", lambda a, b: a > b, ">"), ("lt", lambda a, b: a < b, "<")]
    for name, ok, sym in bounds:
        if name in rule and not ok(value, rule[name]):
            hint = " (leave the key out for the default, which 0 meant before 2026-12)" \
                if value == 0 and key in ZERO_WAS_PRESET else ""
            raise DiffpropError(f"config: {key} must be {sym} {rule[name]}, got {value!r}{hint}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"section [{prefix.rstrip('.')}]" if prefix else "top level"
        raise DiffpropError(f"config: unknown key '{prefix}{unknown[0]}' in {where}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            if not isinstance(value, dict):
                raise DiffpropError(f"config: [{prefix}{name}] must be a section (table), got {value!r}")
            kwargs[name] = _build(f.default_factory, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check(prefix + name, value, f)
    return cls(**kwargs)


def _cross_check(cfg: Config) -> Config:
    d = cfg.diffusion
    lo, hi = linear_range(d.T, d.beta_start, d.beta_end)
    if d.schedule == "linear" and lo > hi:
        raise DiffpropError(f"config: diffusion.beta_start ({lo:g}) must be <= diffusion.beta_end ({hi:g})")
    s = cfg.smd
    if cfg.model.smd and s.loss == "energy" and s.n_eta < 2:
        raise DiffpropError(f"config: smd.loss = 'energy' compares eta draws and needs smd.n_eta >= 2, got {s.n_eta}")
    if cfg.model.smd and cfg.model.kind == "unet" and s.variant == "official" and (s.g_width or 4) % 4:
        raise DiffpropError(f"config: smd.g_width ({s.g_width}) must be a multiple of 4 for the official variant's "
                            f"U-Net g_xi (or left out: automatic)")
    _check_process(cfg)
    if (d.parameterization == "cm") != (cfg.objective.loss in ("cd", "ct")):
        raise DiffpropError(f"config: diffusion.parameterization = 'cm' (a consistency model) goes with objective.loss "
                            f"= 'cd' or 'ct'; got {d.parameterization!r} with {cfg.objective.loss!r}")
    if cfg.sample.clipped_eps and cfg.sample.sampler != "ddim":
        raise DiffpropError(f"config: sample.clipped_eps applies to sample.sampler = 'ddim', not "
                            f"{cfg.sample.sampler!r}")
    if (cfg.sample.steps or 0) > d.T and d.process == "discrete":
        raise DiffpropError(f"config: sample.steps ({cfg.sample.steps}) must be <= diffusion.T ({d.T})")
    c = cfg.consistency
    if c.steps > c.window:  # t - t' <= window, so further steps repeat a timestep: network calls that change nothing
        raise DiffpropError(f"config: consistency.steps ({c.steps}) must be <= consistency.window ({c.window}): "
                            f"the reverse path from t to t' has at most window steps")
    return cfg


PROCESS_KEYS = ("beta_min", "beta_max", "sigma_min", "sigma_max", "sigma_data", "t_min")


def _check_process(cfg: Config) -> None:
    """``diffusion.process`` against its options, the parameterization, the time sampler, SMD, the regularizers and
    the sampling grid."""
    d, name = cfg.diffusion, cfg.diffusion.process
    own = {f.name for f in dataclasses.fields(PROCESS_CONFIGS[name])} if name in PROCESS_CONFIGS else set()
    for key in PROCESS_KEYS:
        if getattr(d, key) is not None and key not in own:
            users = [p for p, c in PROCESS_CONFIGS.items() if key in {f.name for f in dataclasses.fields(c)}]
            raise DiffpropError(f"config: diffusion.{key} applies to diffusion.process = {', '.join(users)}, not "
                                f"{name!r}")
    if name == "discrete":
        what = {"edm": "Karras et al. 2022's preconditioning", "cm": "a consistency model, Song et al. 2023"}
        if d.parameterization in what:
            raise DiffpropError(f"config: diffusion.parameterization = {d.parameterization!r} "
                                f"({what[d.parameterization]}) needs a continuous-time diffusion.process "
                                f"({', '.join(PROCESS_CONFIGS)}), not 'discrete'")
    else:
        if d.parameterization == "v" and not PROCESSES[name].vp:
            vp = [p for p, c in PROCESSES.items() if c is None or c.vp]  # None: the discrete chain
            raise DiffpropError(f"config: diffusion.parameterization = 'v' needs a variance-preserving process "
                                f"({', '.join(vp)}), not {name!r}")
        if cfg.model.smd:
            raise DiffpropError(f"config: model.smd (soft mixture denoising) is built on the discrete chain; not on "
                                f"diffusion.process = {name!r}")
        for reg in cfg.objective.regularizers:
            if reg in DISCRETE_ONLY:
                raise DiffpropError(f"config: objective.regularizers: {reg} is defined on the discrete chain only "
                                    f"({DISCRETE_ONLY[reg]}); not on diffusion.process = {name!r}")
        if cfg.sample.spacing in SPACINGS:
            raise DiffpropError(f"config: sample.spacing = {cfg.sample.spacing!r} is a spacing of the discrete chain; "
                                f"with diffusion.process = {name!r} allowed: {', '.join(GRIDS)}")
    sampler = d.time_sampler or default_time_sampler(name)
    if sampler == "uniform-int" and name != "discrete":
        raise DiffpropError(f"config: diffusion.time_sampler = 'uniform-int' draws the discrete chain's integer "
                            f"timesteps; diffusion.process = {name!r} has continuous time")


def config_from_dict(data: dict) -> Config:
    return _cross_check(_build(Config, data))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``section.key=value``: the value is read as a TOML value (number, bool, string, list), else as a string."""
    if "=" not in item:
        raise DiffpropError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    except (ValueError, RecursionError) as e:  # a number of over 4300 digits; arrays nested thousands deep
        raise DiffpropError(f"--set {item[:40]!r}: cannot read the value ({_toml_problem(e)})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides or []:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DiffpropError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DiffpropError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise DiffpropError(f"{path}: not valid TOML ({_toml_problem(e)})") from None
    except OSError as e:
        raise DiffpropError(f"{path}: cannot read the config ({e.strerror})") from None


def _toml_problem(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# keys where 0 meant "the preset / automatic / off" in configs written before 2026-12; they are absent now
ZERO_WAS_PRESET = ("data.image_size", "diffusion.beta_start", "diffusion.beta_end", "model.dropout", "smd.g_width",
                   "train.time_budget", "epdm.weight", "epdm.L", "epdm.rho", "sample.steps", "sample.batch_size",
                   "sample.clip_x0")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *, saved: bool = False) -> Config:
    """The defaults, updated by the TOML file at ``path`` and then by ``--set`` overrides, validated. ``saved``: the
    file is a run folder's ``config.toml``, written by diffprop, so a name renamed since it was written
    (:data:`diffprop.names.RENAMED`) is read under its new name, and in a file of format 1 (no ``version``) a 0 that
    meant "the preset" in a key of :data:`ZERO_WAS_PRESET` is read as the key left out."""
    data = read_toml(path) if path is not None else {}
    if saved and "version" not in data:  # format 1
        for key in ZERO_WAS_PRESET:
            section, name = key.split(".")
            if isinstance(data.get(section), dict) and type(data[section].get(name)) in (int, float) \
                    and data[section][name] == 0:
                del data[section][name]
    if saved:
        for key, renamed in RENAMED.items():
            section, name = key.split(".")
            value = data[section].get(name) if isinstance(data.get(section), dict) else None  # (else _build says)
            if isinstance(value, str) and value in renamed:
                data[section][name] = renamed[value][0]
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.dumps())
