"""The trainer: one loop on accelerate for CPU, one GPU, or many (``accelerate launch``).

Every random choice flows from the config's ``seed``: the weights' initialisation (global RNG),
the data order (a permutation per epoch, derived from the seed and the epoch, so the data position
is a function of the step), and the loss's timesteps and noise (a per-rank generator whose state is
checkpointed). Together with the model, EMA and optimizer tensors this makes ``--resume latest``
continue bit-exactly on CPU.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import sys
import time
import weakref
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from .checkpoint import (check_optimizer, check_param_groups, check_rng, check_tensors, last_good, list_checkpoints,
                         load_checkpoint, load_tensors, optimizer_from_tensors, remove_partial, resolve_checkpoint,
                         save_checkpoint, set_aside)
from .config import Config, load_config, save_config
from .data import load_dataset
from .errors import DiffpropError, one_line
from .init_from import init_from as init_weights
from .losses import Objective, Term
from .runs import (TRAINING_COPIES, build_denoiser, lock_run, read_data_info, read_process_info, write_data_info,
                   write_process_info)

# Settings that may change between a run and its resumption; anything else must match. (grad_accum and
# mixed_precision change the rounding and, grad_accum, the noise draws, not what is optimised.)
RESUMABLE_CHANGES = {"train.steps", "train.checkpoint_every", "train.log_every", "train.log_grad_norms",
                     "train.keep_last", "train.time_budget", "train.grad_accum", "train.mixed_precision",
                     "train.log_with"}
# Optimisation settings that may change too (the model stays what it is: a diverged run resumes from its last good
# checkpoint with a smaller lr); a resume says which changed.
OPTIMISATION_CHANGES = {"train.lr", "train.weight_decay", "train.warmup_steps", "train.lr_schedule", "train.grad_clip",
                        "train.ema_decay", "train.ema_warmup"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def make_accelerator(cfg: Config, run_dir: Path | None = None) -> Accelerator:
    """The run's Accelerator. ``train.mixed_precision = "auto"`` leaves the precision to accelerate: what
    ``accelerate launch --mixed_precision`` or the ``accelerate config`` it launches with set
    (``ACCELERATE_MIXED_PRECISION``), else none; any other value is used as given. ``train.log_with`` adds
    accelerate's tracker, writing under ``RUN_DIR/trackers``."""
    tc = cfg.train
    device, mp = tc.device, None if tc.mixed_precision == "auto" else tc.mixed_precision
    if device == "cuda" and not torch.cuda.is_available():
        raise DiffpropError("config: train.device = 'cuda' but no CUDA device is available")
    cpu = device == "cpu" or not torch.cuda.is_available()
    if tc.log_with == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise DiffpropError("config: train.log_with = 'tensorboard' needs the package tensorboard "
                            "(pip install tensorboard), which is not installed")
    # what accelerate will choose (its launcher's variable), checked before an Accelerator fixes it for the process
    if cpu and (mp or os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()) == "fp16":
        where = ("train.mixed_precision = 'fp16'" if mp else
                 "accelerate's mixed precision (train.mixed_precision = 'auto') is fp16 and")
        raise DiffpropError(f"config: {where} needs a GPU; use 'bf16' or 'no' on CPU")
    tracking = {} if tc.log_with == "none" else {"log_with": tc.log_with, "project_dir": Path(run_dir) / "trackers"}
    return Accelerator(cpu=cpu, mixed_precision=mp, **tracking)


class Trainer:
    """Trains ``cfg``'s denoiser into ``run_dir``; ``resume`` is ``"latest"`` or a checkpoint folder."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: str | None = None, progress: bool = True,
                 objective: Callable | None = None, init_from: str | Path | None = None):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        tc = cfg.train
        if resume and init_from:
            raise DiffpropError("--init-from starts a new run from other weights; --resume continues this one: "
                                "give one of them")
        self.acc = make_accelerator(cfg, self.run_dir)
        self.device, self.rank, self.world = self.acc.device, self.acc.process_index, self.acc.num_processes
        if tc.batch_size % (self.world * tc.grad_accum):
            raise DiffpropError(f"config: train.batch_size ({tc.batch_size}) must be divisible by the number of "
                                f"processes ({self.world}) times train.grad_accum ({tc.grad_accum})")
        # one trainer per run folder (an OS lock, dropped by the kernel on exit or crash); then the debris of a crash
        # in a checkpoint write is cleared, before anything in the folder is read
        self._unlock = weakref.finalize(self, lock_run(self.run_dir)) if self.acc.is_main_process else None
        if self.acc.is_main_process:
            remove_partial(self.run_dir)
        if not resume and list_checkpoints(self.run_dir):
            raise DiffpropError(f"{self.run_dir}: already holds a run; use --resume latest to continue it or --out for "
                                f"a new one")
        ckpt = self._check_resume(resume) if resume else None
        saved = read_data_info(self.run_dir) if ckpt else {}
        self.dataset = load_dataset(cfg.data.name, num_samples=cfg.data.num_samples,
                                    image_size=cfg.data.image_size or None, seed=cfg.seed,
                                    scaler=saved.get("scaler"))
        N = len(self.dataset.x)
        if tc.batch_size > N:
            raise DiffpropError(f"config: train.batch_size ({tc.batch_size}) exceeds the dataset size ({N})")
        small = self.dataset.x.numel() * 4 < 2**30  # keep small datasets on the device
        self.x = self.dataset.x.to(self.device) if small else self.dataset.x

        torch.manual_seed(cfg.seed)
        self.denoiser = build_denoiser(cfg, self.dataset.data_shape, copies=TRAINING_COPIES, data=self.dataset.x,
                                       process=read_process_info(self.run_dir, cfg) if ckpt else None)
        self.init = init_weights(self.denoiser, cfg, init_from) if init_from else None
        self.denoiser = self.denoiser.to(self.device)
        self.net = self.denoiser.net
        self.objective = objective or Objective.from_config(cfg, sample_data=self.sample_data)
        # a consistency model's target network theta- (losses.consistency_models): updated after each step, checkpointed
        self.target = self.objective.attach(self.denoiser) if hasattr(self.objective, "attach") else None
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.ema = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed * 1_000_003 + 7919 * (self.rank + 1))
        self.step, self._epoch, self._perm = 0, -1, None
        if ckpt is not None:
            self._restore(ckpt)
        self.denoiser.net, self.optimizer = self.acc.prepare(self.net, self.optimizer)
        self.acc.wait_for_everyone()  # every rank has read the run folder before the main process rewrites it
        self._params = list(self.net.parameters())
        live = self.net.state_dict()
        self._ema_pairs = [(self.ema[k], live[k]) for k in self.ema if live[k].is_floating_point()]
        self._ema_copies = [(self.ema[k], live[k]) for k in self.ema if not live[k].is_floating_point()]
        if self.acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._trim_log()
            save_config(cfg, self.run_dir / "config.toml")
            write_data_info(self.run_dir, self.dataset)
            write_process_info(self.run_dir, self.denoiser)
            if self.init:
                (self.run_dir / "init.json").write_text(json.dumps(self.init, indent=1))
            if cfg.train.log_with != "none":
                self.acc.init_trackers(self.run_dir.name, config={k: v if isinstance(v, (int, float, str)) else str(v)
                                                                  for k, v in _flatten(cfg.to_dict()).items()})

    # -- resume ----------------------------------------------------------------------------------
    def _check_resume(self, resume: str) -> dict | None:
        """The checkpoint to resume from, read and checked against this run's config; None for ``latest`` in a run
        stopped before its first checkpoint was complete, which starts again from step 0 (as a fresh run would)."""
        restart = resume == "latest" and not list_checkpoints(self.run_dir) and (self.run_dir / "config.toml").is_file()
        path = None if restart else resolve_checkpoint(self.run_dir, resume)
        if path is not None and path.resolve().parent != (self.run_dir / "checkpoints").resolve():
            raise DiffpropError(f"--resume {path}: a checkpoint of {path.parent.parent}, not of {self.run_dir}; resume "
                                f"a run in its own folder (--out {path.parent.parent}), or start a new one from its "
                                f"weights with --init-from")
        if (self.run_dir / "config.toml").is_file():
            old = _flatten(load_config(self.run_dir / "config.toml", saved=True).to_dict())
            new = _flatten(self.cfg.to_dict())
            allowed = RESUMABLE_CHANGES | OPTIMISATION_CHANGES
            diff = [k for k in new if new[k] != old.get(k) and k not in allowed]
            if diff:
                k = diff[0]
                raise DiffpropError(f"cannot resume: {k} is {new[k]!r} but the run was trained with {old.get(k)!r}; "
                                    f"only {', '.join(sorted(allowed))} may change")
            changed = [f"{k} = {new[k]!r} (was {old.get(k)!r})" for k in new if new[k] != old.get(k)]
            if changed and self.acc.is_main_process:
                print(f"diffprop: note: resuming with {', '.join(changed)}", file=sys.stderr)
        if restart:
            if self.acc.is_main_process:
                print(f"diffprop: note: {self.run_dir} holds no complete checkpoint (it stopped before or during its "
                      f"first); "
                      f"starting from step 0", file=sys.stderr)
            return None
        ckpt = load_checkpoint(path)
        if ckpt["state"].get("world_size", 1) != self.world:
            raise DiffpropError(f"cannot resume: checkpoint was written by {ckpt['state']['world_size']} "
                                f"processes, this run has {self.world}")
        return {**ckpt, "dir": path}

    def _restore(self, ckpt: dict) -> None:
        """Load a checkpoint read by :meth:`_check_resume`, every part checked against this run's model first."""
        d, live, meta = ckpt["dir"], self.net.state_dict(), ckpt["state"]["optimizer"]
        check_tensors(d / "model.safetensors", ckpt["model"], live)
        check_tensors(d / "ema.safetensors", ckpt["ema"], live)
        check_optimizer(d / "optimizer.safetensors", ckpt["optimizer"], meta["scalars"], list(self.net.parameters()))
        check_param_groups(d / "state.json", meta["param_groups"], self.optimizer.state_dict()["param_groups"])
        sizes = {"generator": self.generator.get_state().numel(), "torch": torch.get_rng_state().numel()}
        if "cuda" in ckpt["rng"] and torch.cuda.is_available():
            sizes["cuda"] = torch.cuda.get_rng_state().numel()
        check_rng(d / "rng.safetensors", ckpt["rng"], sizes, self.world)
        self.net.load_state_dict(ckpt["model"])
        self.ema = {k: v.to(self.device) for k, v in ckpt["ema"].items()}
        self.optimizer.load_state_dict(optimizer_from_tensors(ckpt["optimizer"], meta))
        for group in self.optimizer.param_groups:  # a changed train.weight_decay applies (lr is set at every step)
            group["weight_decay"] = self.cfg.train.weight_decay
        # rows are cloned: set_state reads a view's storage from its start, ignoring the row's offset
        rng = {k: v[self.rank].clone() for k, v in ckpt["rng"].items()}
        try:
            self.generator.set_state(rng["generator"])
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
        except RuntimeError as e:
            raise DiffpropError(f"{d / 'rng.safetensors'}: not a valid generator state ({one_line(e)})") from None
        self.step = ckpt["state"]["step"]
        if hasattr(self.objective, "load_state_dict") and (d / "regularizers.safetensors").is_file():
            state = load_tensors(d / "regularizers.safetensors")
            if any(v.ndim < 1 or len(v) != self.world for v in state.values()):
                raise DiffpropError(f"{d / 'regularizers.safetensors'}: not one row per process ({self.world})")
            self.objective.load_state_dict({k: v[self.rank].clone() for k, v in state.items()}, self.device)
        if self.target is not None:
            target = load_tensors(d / "target.safetensors")
            check_tensors(d / "target.safetensors", target, live)
            self.target.load_state_dict(target, self.step)

    def _trim_log(self) -> None:
        """Forget the log lines past the step training starts from (a resumed earlier checkpoint, a crash). A torn last
        line (a kill during its write) is dropped; any other line that is not a record with a step is refused."""
        log = self.run_dir / "log.jsonl"
        if not log.is_file():
            return
        lines, keep = log.read_bytes().decode("utf-8", errors="replace").split("\n"), []
        for i, line in enumerate(lines, 1):
            try:
                step = json.loads(line)["step"] if line.strip() else None
            except (ValueError, TypeError, KeyError, IndexError, RecursionError):
                step = False
            if step is None or (step is False and i == len(lines)):
                continue
            if type(step) is not int:
                raise DiffpropError(f"{log}: line {i} is not a JSON record with an integer 'step'; fix or delete that "
                                    f"line (training continues from step {self.step})")
            if step <= self.step:
                keep.append(line)
        log.write_text("".join(ln + "\n" for ln in keep))

    # -- one step --------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """This rank's share of the global batch of ``step``: epoch-wise permutations, no repeats."""
        B, N = self.cfg.train.batch_size, len(self.x)
        epoch, i = divmod(step, N // B)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(N, generator=g)
        b = B // self.world
        idx = self._perm[i * B + self.rank * b: i * B + (self.rank + 1) * b]
        return self.x[idx.to(self.x.device)].to(self.device, non_blocking=True)

    def sample_data(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` training examples drawn with replacement (a regularizer's extra batch, e.g. EPDM's S_0')."""
        idx = torch.randint(0, len(self.x), (n,), generator=generator, device=generator.device)
        return self.x[idx.to(self.x.device)].to(self.device, non_blocking=True)

    def lr_at(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then constant or a cosine decay to 0 at ``train.steps``."""
        tc = self.cfg.train
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else tc.lr
        if tc.lr_schedule == "cosine" and step >= tc.warmup_steps:
            lr *= 0.5 * (1 + math.cos(math.pi * (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)))
        return lr

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One optimizer step; returns the (process-averaged) loss, the gradient norm and the loss's parts.

        With ``train.grad_accum = n`` this rank's share of the batch is split into n micro-batches, each one's
        loss divided by n and back-propagated before the next is drawn (gradients synchronised between processes
        on the last only): for a loss that averages per-example terms, the gradient of the whole batch, to float
        rounding. Batch-level terms (EPDM's MMD, say) are estimated per micro-batch instead."""
        tc, n = self.cfg.train, self.cfg.train.grad_accum
        if not self.denoiser.training:  # (a recursive walk over every module: not on every step)
            self.denoiser.train()
        scaled = self.acc.scaler is not None  # fp16: accelerate scales the loss and unscales before clipping
        value, parts = 0.0, {}
        norms = tc.log_grad_norms and (self.step + 1) % tc.log_every == 0  # a step whose log line is written
        for i, x in enumerate(self.batch(self.step).chunk(n)):
            with self.acc.no_sync(self.net) if i < n - 1 else contextlib.nullcontext():
                out = self.objective(self.denoiser, x, self.generator)
                loss, micro = (out.value, out.logs) if isinstance(out, Term) else (out.mean(), {})
                if norms and isinstance(out, Term) and out.parts:
                    micro = {**micro, **{f"grad_norm.{k}": self._grad_norm_of(p) for k, p in out.parts.items()}}
                v = self.acc.reduce(loss.detach(), "mean") if self.world > 1 else loss.detach()
                if not torch.isfinite(v):
                    raise self._diverged(f"the loss is {v.item()}")
                (self.acc.backward if scaled else torch.Tensor.backward)(loss / n if n > 1 else loss)
            value = value + v / n if n > 1 else v
            for k, p in micro.items():
                parts[k] = parts.get(k, 0.0) + p / n
        if scaled:
            self.acc.unscale_gradients()
        # torch's own clipping: accelerate's wrapper re-checks optional imports on every call
        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, tc.grad_clip or math.inf, foreach=True)
        if not scaled and not torch.isfinite(grad_norm):  # (fp16's scaler skips such a step by itself)
            raise self._diverged(f"the gradient norm is {grad_norm.item()}")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        # accelerate's optimizer wrapper only matters with a grad scaler; otherwise step the optimizer itself
        (self.optimizer if scaled else self.optimizer.optimizer).step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._update_ema()
        if self.target is not None:
            self.target.update(self.step)
        return value, grad_norm, parts

    def _grad_norm_of(self, part: torch.Tensor) -> torch.Tensor:
        """The gradient norm of one weighted part of the loss (an extra backward, the graph kept for the step's)."""
        if not part.requires_grad:
            return torch.zeros((), device=self.device)
        grads = torch.autograd.grad(part, self._params, retain_graph=True, allow_unused=True)
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None] or [part.new_zeros(())]))

    def _diverged(self, what: str) -> DiffpropError:
        """The error that stops a diverged run: ``what`` is non-finite at step ``self.step + 1``, computed with the
        weights of step ``self.step``. A checkpoint of those weights is no good one: it is moved aside to
        ``checkpoints/diverged_step_N``, so that ``--resume latest`` continues from the last good one, whose weights
        trained on, and that one is named."""
        aside = set_aside(self.run_dir, self.step) if self.acc.is_main_process else None
        return DiffpropError(f"training stopped: {what} at step {self.step + 1}; the weights were not updated; "
                             + (f"their checkpoint moved to {aside}; " if aside else "")
                             + f"last good checkpoint: {last_good(self.run_dir) or 'none'}")

    @torch.no_grad()
    def _update_ema(self) -> None:
        tc = self.cfg.train
        decay = min(tc.ema_decay, (1 + self.step) / (10 + self.step)) if tc.ema_warmup else tc.ema_decay
        torch._foreach_lerp_([e for e, _ in self._ema_pairs], [p for _, p in self._ema_pairs], 1 - decay)
        for e, b in self._ema_copies:
            e.copy_(b)

    # -- the loop --------------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint the current step (every rank's RNG states are gathered to the main process)."""
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        # uint8 does not survive gloo's all-gather intact: ship the bytes as int64
        rng = {k: self.acc.gather(v.to(self.device, torch.int64)[None]).cpu().to(torch.uint8) for k, v in rng.items()}
        # the regularizers' state (chain_mmd's replay buffer), one row per rank like the RNG states
        state = self.objective.state_dict() if hasattr(self.objective, "state_dict") else {}
        state = {k: self.acc.gather(v.to(self.device)[None]).cpu() for k, v in state.items()}
        path = None
        if self.acc.is_main_process:
            more = {"target": self.target.state_dict()} if self.target is not None else {}
            if state:
                more["regularizers"] = state
            path = save_checkpoint(self.run_dir, self.step, model=self.acc.unwrap_model(self.net).state_dict(),
                                   ema=self.ema, optimizer=self.optimizer.state_dict(), rng=rng,
                                   extra={"world_size": self.world, "torch": torch.__version__},
                                   keep_last=self.cfg.train.keep_last,
                                   more=more or None)
        self.acc.wait_for_everyone()
        return path

    def _out_of_time(self, deadline: float) -> bool:
        """Whether the time budget is spent; decided by the main process so that every rank stops together."""
        if deadline == math.inf:
            return False
        flag = torch.tensor(float(time.perf_counter() >= deadline), device=self.device)
        return bool(self.acc.reduce(flag, "max") > 0)

    def train(self) -> Path:
        tc = self.cfg.train
        main = self.acc.is_main_process
        budget = f" ({tc.time_budget:g} s budget)" if tc.time_budget else ""  # the steps then are only a cap
        bar = tqdm(total=None if tc.time_budget else tc.steps, initial=self.step, desc="training" + budget,
                   unit="step", disable=not (self.progress and main), dynamic_ncols=True)
        log = open(self.run_dir / "log.jsonl", "a") if main else None
        losses, parts, t0, s0 = [], {}, time.perf_counter(), self.step
        deadline = t0 + tc.time_budget if tc.time_budget else math.inf
        try:
            while self.step < tc.steps:
                loss, grad_norm, step_parts = self.train_step()
                losses.append(loss)
                for k, v in step_parts.items():
                    parts.setdefault(k, []).append(torch.as_tensor(v, dtype=torch.float64))
                bar.update(1)
                stop = self.step == tc.steps or self._out_of_time(deadline)  # equal wall-clock budgets
                if self.step % tc.log_every == 0 or stop:
                    now = time.perf_counter()
                    mean = torch.stack(losses).mean().item()
                    rec = {"step": self.step, "loss": mean, "lr": self.lr_at(self.step - 1),
                           "grad_norm": float(grad_norm), "it_s": (self.step - s0) / (now - t0),
                           **{k: torch.stack([x.cpu() for x in v]).mean().item() for k, v in parts.items()}}
                    bar.set_postfix(loss=f"{mean:.4f}")
                    if log:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    if tc.log_with != "none":
                        self.acc.log({k: v for k, v in rec.items() if k != "step"}, step=self.step)
                    losses, parts, t0, s0 = [], {}, now, self.step
                if self.step % tc.checkpoint_every == 0 or stop:
                    self.save()
                if stop:
                    break
        finally:
            bar.close()
            if log:
                log.close()
            if self._unlock is not None:
                self._unlock()
            for tracker in self.acc.trackers if main else ():  # (not end_training: it ends the process group)
                tracker.finish()
        return self.run_dir
