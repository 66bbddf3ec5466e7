"""``diffprop``: the command line. Each command is a thin layer over the library.

Bad input exits with status 2 and one line ``diffprop: error: ...``, no traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import sys
import tempfile
from pathlib import Path

from .errors import DiffpropError
from .limits import MAX_SAMPLES, check_fits
from .names import SPACINGS


def _positive(kind, most: int | None = None):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s[:40]!r}") from None
        if v < 1 or (most is not None and v > most):
            raise argparse.ArgumentTypeError(f"must be {'>= 1' if most is None else f'in 1..{most}'}, got {s}")
        return v
    return parse


def _seed(s):
    from .limits import MAX_SEED

    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s[:40]!r}") from None
    if not 0 <= v <= MAX_SEED:  # numpy's generators (the toy datasets) take 32-bit seeds
        raise argparse.ArgumentTypeError(f"must be in 0..{MAX_SEED}, got {s[:40]}")
    return v


def _finite(least: float | None = None):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s[:40]!r}") from None
        if not math.isfinite(v) or (least is not None and v < least):
            raise argparse.ArgumentTypeError(f"must be a finite number{'' if least is None else f' >= {least}'}, "
                                             f"got {s[:40]}")
        return v
    return parse


def _writable_out(path: Path, folder: bool) -> Path:
    """``path`` (an output folder, or file) after checking it can be written, before any work is done: a run of hours
    must not end in a traceback. Nothing is created; a probe file comes and goes in the nearest existing folder."""
    if path.exists() and folder != path.is_dir():
        kind, other = ("file", "folder") if folder else ("folder", "file")
        raise DiffpropError(f"--out {path}: is a {kind}; give a {other}")
    base = path if folder else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise DiffpropError(f"--out {path}: {base} is a file, so nothing can be created under it")
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as e:
        raise DiffpropError(f"--out {path}: cannot write in {base} ({e.strerror})") from None
    return path


def cmd_train(args) -> None:
    from .config import load_config
    from .plots import plot_loss
    from .training import Trainer

    cfg = load_config(args.config, args.set)
    out = _writable_out(Path(args.out or Path("runs") / Path(args.config).stem), folder=True)
    trainer = Trainer(cfg, out, resume=args.resume, progress=not args.quiet, init_from=args.init_from)
    trainer.train()
    if trainer.acc.is_main_process:
        plot_loss(out / "log.jsonl", out / "loss.png")
        print(f"trained {trainer.step} steps; run folder: {out}")


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise DiffpropError("--device cuda: no CUDA device is available")
    return name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _denoiser_for(args):
    """The model a command talks to: a run's (EMA) denoiser, a diffusers checkpoint, or the exact oracle of a
    Gaussian-mixture dataset. Returns (denoiser, config, data info, meta, device)."""
    from .config import Config
    from .data import load_dataset
    from .oracle import OracleDenoiser
    from .runs import build_schedule, load_run

    device = _device(args.device)
    sources = [bool(args.run_dir), bool(args.oracle), bool(getattr(args, "diffusers", None))]
    if sum(sources) != 1:
        raise DiffpropError("give exactly one model: a run folder, --oracle DATASET"
                            + (" or --diffusers DIR" if hasattr(args, "diffusers") else ""))
    if not args.oracle and (args.eps_scale is not None or args.eps_bias is not None):
        raise DiffpropError("--eps-scale and --eps-bias apply to --oracle (a defect put into the exact model)")
    if not args.run_dir and args.no_ema:
        raise DiffpropError("--no-ema applies to a run folder (its raw weights instead of the EMA)")
    process = getattr(args, "process", None)
    if process and not args.oracle:
        raise DiffpropError("--process applies to --oracle (a run or a diffusers checkpoint knows its process)")
    if args.oracle:
        from .processes import build_process

        # VE's sigma_max and EDM's sigma_data default from the data (its largest pairwise distance, its std)
        ds = load_dataset(args.oracle, num_samples=2000 if process in ("ve-sde", "edm") else 2)
        if ds.mixture is None:
            raise DiffpropError(f"--oracle {args.oracle}: the oracle needs a Gaussian-mixture dataset "
                                f"(gmm-grid, gmm-ring)")
        cfg = Config()
        scale, bias = 1.0 if args.eps_scale is None else args.eps_scale, args.eps_bias or 0.0
        oracle = OracleDenoiser(ds.mixture, build_process(process or "discrete", schedule=build_schedule(cfg),
                                                          data=ds.x), scale, bias)
        meta = {"model": f"oracle:{args.oracle}", "eps_scale": scale, "eps_bias": bias}
        return oracle, cfg, {"name": args.oracle, "data_shape": list(ds.data_shape), "scaler": None}, meta, device
    if getattr(args, "diffusers", None):
        from .diffusers_io import load_diffusers

        denoiser, scheduler = load_diffusers(args.diffusers)
        c = denoiser.net.model.config
        size = [c.sample_size] * 2 if isinstance(c.sample_size, int) else list(c.sample_size)
        info = {"name": args.dataset or "diffusers", "data_shape": [c.in_channels, *size], "scaler": None}
        meta = {"model": f"diffusers:{args.diffusers}", "scheduler": scheduler, "var_type": denoiser.var_type,
                "clip_x0": denoiser.clip_x0}
        return denoiser.to(device), Config(), info, meta, device
    run = load_run(args.run_dir, ema=not args.no_ema, device=device)
    meta = {"model": str(run.dir), "step": run.step, "ema": not args.no_ema}
    return run.denoiser, run.config, run.data, meta, device


DIFFUSERS_SAMPLERS = ("ddpm", "ddim")  # the steps of diffusers' DDPMScheduler and DDIMScheduler
# sampler options set from the model and the config (clip_x0, var_type), or by flags of their own (eta, clipped_eps)
_OWN_FLAGS = ("clip_x0", "var_type", "eta", "clipped_eps")
_FLAG_HELP = {"snr": "pc: the Langevin corrector's signal-to-noise ratio (Song et al. 2021, score SDE; default 0.16)",
              "corrector_steps": "pc: Langevin corrector moves per step (default 1)",
              "churn": "heun: EDM's stochastic churn S_churn (Karras et al. 2022, Alg. 2; default 0: deterministic)",
              "s_tmin": "heun: churn only where sigma / alpha >= this (default 0)",
              "s_tmax": "heun: churn only where sigma / alpha <= this (default: no bound)",
              "s_noise": "heun: scale of the churn noise (default 1)",
              "rtol": "ode: relative tolerance of the adaptive RK45 (default 1e-5)",
              "atol": "ode: absolute tolerance (default 1e-5)",
              "method": "ode: scipy.integrate.solve_ivp's method (default RK45)",
              "shift_window": "ddpm, ddim: the time-shift sampler (Li et al. 2024; TS-DDPM, TS-DDIM): step from the "
                              "timestep among t - W/2 .. t + W/2 whose marginal variance is closest to the state's "
                              "(default: off; the official code's example is 80)",
              "shift_cutoff": "ddpm, ddim: time-shift only at timesteps above this (default 0.3 T, "
                              "the published 300 of 1000)",
              "shift_data_var": "ddpm, ddim: time shift matching abar V + 1 - abar, V the data's variance per "
                                "coordinate (default: the published 1 - abar)",
              "shift_variance": "ddpm, ddim: time shift reading a state's variance over its own coordinates (sample, "
                                "the published rule, for images; default) or over its group of 64 samples (group, "
                                "for low-dimensional data)"}


def _eps_scaling(s):
    from .eps_scaling import parse_eps_scaling

    try:
        return parse_eps_scaling(s)
    except DiffpropError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--eps-scaling {s[:40]!r}: ")) from None


def _sampler_flags() -> dict:
    """The sampler options given as ``--flags`` of their own, from the registered samplers' option dataclasses:
    name -> (the samplers that take it, its field)."""
    from .samplers import SAMPLERS

    flags: dict = {}
    for name, spec in SAMPLERS.items():
        for f in dataclasses.fields(spec.options):
            if f.name not in _OWN_FLAGS:
                flags.setdefault(f.name, ([], f))[0].append(name)
    return flags


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    for name, (users, f) in _sampler_flags().items():
        typ = f.type.removesuffix(" | None")
        kind = (_positive(int) if typ == "int" else _finite(least=0.0) if typ == "float" else str)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=typ.upper(),
                       help=_FLAG_HELP.get(name, f"option of --sampler {' or '.join(users)}"))


def cmd_sample(args) -> None:
    import numpy as np

    from .data import to_data_units
    from .diffusers_io import same_chain_as_diffusers
    from .eps_scaling import check_eps_scaling
    from .plots import plot_samples
    from .samplers import get_sampler, sample, sampler_times

    if args.dataset and not args.diffusers:
        raise DiffpropError("--dataset applies to --diffusers in sample (a run or an oracle knows its data)")
    denoiser, cfg, data, meta, device = _denoiser_for(args)
    if args.dataset:  # the U-Net gives the shape; data named beside it must fit it
        from .data import load_dataset

        shape = tuple(data["data_shape"])
        theirs = load_dataset(args.dataset, num_samples=2, image_size=shape[-1]).data_shape
        if tuple(theirs) != shape:
            raise DiffpropError(f"--dataset {args.dataset}: data of shape {tuple(theirs)} but the --diffusers U-Net "
                                f"takes {shape}")
    if args.format == "png-folder" and len(data["data_shape"]) != 3:
        raise DiffpropError(f"--format png-folder writes images; {data['name']} data has shape "
                            f"{tuple(data['data_shape'])} per item")
    sc = cfg.sample
    sampler = args.sampler or sc.sampler
    spec = get_sampler(sampler)
    if sampler != "ddim" and (args.eta is not None or args.clipped_eps):
        raise DiffpropError(f"--eta and --clipped-eps apply to --sampler ddim, not {sampler}")
    fields = {f.name for f in dataclasses.fields(spec.options)}
    given = {k: getattr(args, k) for k in _sampler_flags() if getattr(args, k, None) is not None}
    if bad := sorted(given.keys() - fields):
        raise DiffpropError(f"--{bad[0].replace('_', '-')} applies to --sampler "
                            f"{' or '.join(_sampler_flags()[bad[0]][0])}, not {sampler}")
    # a diffusers checkpoint clips as its scheduler says (clip_sample); runs as configured, images at 1 by default
    clip = denoiser.clip_x0 if args.diffusers else (sc.clip_x0 or (1.0 if len(data["data_shape"]) == 3 else None))
    if args.clipped_eps and clip is None:
        raise DiffpropError("--clipped-eps needs x0 clipping, and this model samples without it")
    options = {"eta": args.eta if args.eta is not None else sc.eta,
               "clipped_eps": args.clipped_eps or sc.clipped_eps} if sampler == "ddim" else \
        {"var_type": denoiser.var_type} if sampler == "ddpm" else {}
    options.update(given)
    if given.get("shift_window") and getattr(denoiser.process, "T", None) is None:
        raise DiffpropError(f"--shift-window: time-shift sampling picks among the timesteps of the discrete chain; "
                            f"the {denoiser.process.name} process has none")
    if args.eps_scaling:
        check_eps_scaling(*args.eps_scaling, denoiser.process.t_max)
        options["eps_scaling"] = args.eps_scaling
    if "clip_x0" in fields:
        options["clip_x0"] = clip
    # a diffusers checkpoint respaces as its scheduler says (timestep_spacing, steps_offset) where diffusers has the
    # sampler; a run as configured for its sample.sampler; else the sampler's own grid and steps
    scheduler = meta.get("scheduler", {}) if sampler in DIFFUSERS_SAMPLERS else {}
    own = sampler == sc.sampler
    spacing = args.spacing or scheduler.get("timestep_spacing") or (sc.spacing if own else None)
    offset = scheduler.get("steps_offset", 0) if spacing == "leading" else 0
    times = sampler_times(denoiser, sampler, args.steps or (sc.steps if own else 0) or None, spacing, offset)
    steps = len(times) - 1
    T = getattr(denoiser.process, "T", None)
    if args.diffusers and spacing in SPACINGS and steps < T and not same_chain_as_diffusers(
            [int(t) for t in reversed(times[:-1].tolist())], T):
        print(f"diffprop: note: with {spacing} spacing and {steps} of T = {T} steps, diffusers' scheduler steps from "
              f"k to k - T // steps = k - {T // steps} and diffprop to the next timestep it visits, so samples differ "
              f"from the diffusers pipeline's", file=sys.stderr)
    default = (Path(args.run_dir) / "samples" / f"{sampler}-{steps}-seed{args.seed}.npz" if args.run_dir
               else Path(f"samples-oracle-{args.oracle}.npz" if args.oracle else "samples-diffusers.npz"))
    folder = Path(args.out or default.with_suffix(""))
    if args.format == "png-folder" and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise DiffpropError(f"{folder}: exists and is not an empty folder; choose a new --out")
    _writable_out(folder if args.format == "png-folder" else Path(args.out or default), args.format == "png-folder")
    num = args.num or sc.num
    check_fits(3 * 4.0 * num * math.prod(data["data_shape"]),  # float32; the batches, their concatenation, the file's
               f"sample --num {num} ({num} samples of shape {tuple(data['data_shape'])}, held three times)")
    noise = args.noise or ("stream" if args.diffusers else "sample")  # stream: diffusers' pipelines' own draws
    drawn = sample(denoiser, num, tuple(data["data_shape"]), sampler=sampler, steps=steps, spacing=spacing,
                   offset=offset, seed=args.seed, device=device, batch_size=args.batch_size or sc.batch_size or None,
                   noise=noise, **options)
    out = to_data_units(drawn.x.float().cpu(), data.get("scaler"))
    if not bool(out.isfinite().all()):  # finite weights can still be a diverged model's
        bad = int((~out.flatten(1).isfinite()).any(1).sum())
        raise DiffpropError(f"{bad} of the {len(out)} samples are NaN or infinite: the model diverged (its weights are "
                            f"finite, its outputs are not); nothing written")
    meta.update(sampler=sampler, steps=steps, nfe=drawn.nfe, process=denoiser.process.name, seed=args.seed,
                clip_x0=clip if "clip_x0" in fields else None, noise=noise, spacing=spacing, offset=offset)
    meta.update(options)
    if args.format == "png-folder":
        from .data.images import save_image_folder

        save_image_folder(out, folder)
        (folder / "meta.json").write_text(json.dumps(meta, indent=1))
        print(f"wrote {len(out)} PNG images and meta.json to {folder}")
        return
    path = Path(args.out or default)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=out.numpy().astype(np.float32), meta=json.dumps(meta))
    plot_samples(out.numpy(), path.with_suffix(".png"), title=f"{sampler}, {steps} steps")
    print(f"wrote {len(out)} samples to {path}")


def load_samples(path: str | Path):
    """The ``samples`` array of an ``.npz`` written by ``sample`` (or the array of an ``.npy``) as float32, after
    checking it holds at least one sample, numbers, and only finite ones; never unpickling."""
    import numpy as np
    import torch

    from .errors import one_line

    path = Path(path)
    if not path.is_file():
        raise DiffpropError(f"{path}: samples file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            x = loaded
        else:
            with loaded as f:
                x = f["samples"]
    except KeyError:
        raise DiffpropError(f"{path}: no 'samples' array (is it a diffprop samples file?)") from None
    except Exception as e:  # numpy raises many types for a file that is not a clean .npz / .npy (BadZipFile, EOF, ...)
        raise DiffpropError(f"{path}: cannot read samples ({one_line(e)[:200]})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":  # a member that is no .npy comes back as bytes
        raise DiffpropError(f"{path}: 'samples' is not a numeric array (got {getattr(x, 'dtype', type(x).__name__)})")
    if x.ndim < 2 or len(x) == 0:
        raise DiffpropError(f"{path}: 'samples' has shape {x.shape}; expected (N, ...) with N >= 1 samples")
    x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise DiffpropError(f"{path}: {bad} of the {len(x)} samples hold NaN or infinite values (or overflow float32)")
    return x


def cmd_evaluate(args) -> None:
    from .data import load_dataset
    from .metrics.toy import sample_metrics

    x = load_samples(args.samples)
    out = _writable_out(Path(args.out or Path(args.samples).with_suffix(".metrics.json")), folder=False)
    ds = load_dataset(args.dataset)
    if tuple(x.shape[1:]) != tuple(ds.data_shape):
        raise DiffpropError(f"{args.samples}: samples have shape {tuple(x.shape[1:])} per item but "
                            f"{args.dataset} has {tuple(ds.data_shape)}")
    if ds.is_image:
        from .metrics.features import default_extractor, get_extractor
        from .metrics.images import image_metrics

        name = args.features or default_extractor(args.dataset, args.inception_weights)
        if args.inception_weights and name != "inception":
            raise DiffpropError(f"--inception-weights applies to --features inception, not {name}")

        extractor = get_extractor(args.features, ds.data_shape, dataset_name=args.dataset,
                                  inception_weights=args.inception_weights, device=_device("auto"))
        extractor.progress = not args.quiet
        metrics = {"dataset": args.dataset, **image_metrics(x, ds.x, extractor, num_reference=args.num_ref)}
        lo, hi = float(ds.x.min()), float(ds.x.max())
        outside = metrics["out_of_range_fraction"] = float(((x < lo - 1e-3) | (x > hi + 1e-3)).float().mean())
        if outside > 0.01:  # unclipped samplers (consistency, Heun): the scores read the pixels as they are
            print(f"diffprop: note: {outside:.1%} of the pixels lie outside the data's range [{lo:g}, {hi:g}]; they "
                  f"are scored as they are (clamp the samples to score what a picture of them shows)", file=sys.stderr)
    else:
        if args.features or args.inception_weights or args.num_ref:
            raise DiffpropError(f"--features, --inception-weights and --num-ref apply to image data; "
                                f"{args.dataset} is not")
        metrics = {"dataset": args.dataset, **sample_metrics(ds.from_data_units(x), ds.x, ds.mixture)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=1))
    for k, v in metrics.items():
        if not isinstance(v, list):
            print(f"{k:>24}: {v:.4g}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(f"wrote {out}")


def cmd_measure(args) -> None:
    from .data import load_dataset
    from .diagnostics.mmd import MAX_TEST_POINTS
    from .diagnostics.propagation import parse_grid, parse_kernel, step_times
    from .measure import describe_checks, run_measure
    from .oracle import OracleDenoiser
    from .samplers import sampler_times

    if 2 * args.num > MAX_TEST_POINTS:  # before any sampling: the noise floor's permutation test holds 2N x 2N
        raise DiffpropError(f"--num {args.num}: at most {MAX_TEST_POINTS // 2} samples per side (the permutation noise "
                            f"floor holds the pooled {MAX_TEST_POINTS} x {MAX_TEST_POINTS} kernel matrix)")
    if getattr(args, "diffusers", None) and not args.dataset:
        raise DiffpropError("--diffusers needs --dataset (the data the checkpoint was trained on)")
    kernels = tuple(k.strip() for k in args.kernels.split(",") if k.strip())
    if not kernels:
        raise DiffpropError(f"--kernels {args.kernels[:40]!r}: name at least one kernel (rbf, laplace, imq, rbf-mix, "
                            f"KERNEL@H)")
    for k in kernels:
        parse_kernel(k)  # reject a bad kernel before any work
    default = Path(args.run_dir) / "measure" if args.run_dir else Path("runs") / "measure"
    out = _writable_out(Path(args.out or default), folder=True)
    denoiser, cfg, info, meta, device = _denoiser_for(args)
    name = getattr(args, "dataset", None) or info["name"]
    ds = load_dataset(name, num_samples=max(args.num * 4, 4000), image_size=info["data_shape"][-1]
                      if len(info["data_shape"]) == 3 else None, seed=args.seed, scaler=info.get("scaler"))
    if list(ds.data_shape) != list(info["data_shape"]):
        raise DiffpropError(f"--dataset {name}: data of shape {tuple(ds.data_shape)} but the model expects "
                            f"{tuple(info['data_shape'])}")
    reference = exact = None
    if ds.mixture is not None:  # the data density is known: exact KL errors, and the oracle's curve beside
        exact = OracleDenoiser(ds.mixture, denoiser.process, var_type=denoiser.var_type)
        reference = None if isinstance(denoiser, OracleDenoiser) else exact
    # the chain measured: the sampler's own times (a bad --steps or --spacing refused before any work)
    grid = parse_grid(args.grid, step_times(sampler_times(denoiser, args.sampler, args.steps, args.spacing)))
    summary = run_measure(denoiser, ds.x, out, {**meta, "dataset": name}, reference=reference,
                          progress=not args.quiet, num=args.num, grid=grid,
                          kernels=kernels, bootstrap_steps=args.bootstrap_steps, var_type=denoiser.var_type,
                          num_permutations=args.permutations, seed=args.seed, device=device, repeats=args.repeats,
                          oracle=exact, sampler=args.sampler, steps=args.steps, spacing=args.spacing,
                          batch_size=args.batch_size)
    for k, v in summary["kernels"].items():
        print(f"{k:>10}: cumulative {v['cumulative_tT']:.3g} at t=T -> {v['cumulative_t1']:.3g} at t=1 "
              f"(floor {v['floor_t1']:.2g}); {v['points_above_floor']}/{v['points']} points above the floor")
        if describe_checks(v):
            print(f"{'':>12}exact KL: {describe_checks(v)}")
    if summary["exact"]:
        print(f"  exact KL: {summary['exact']['verdict']}")
    print(f"wrote {out}/propagation.csv, propagation.png, summary.json")


def cmd_likelihood(args) -> None:
    import torch

    from .data import load_dataset
    from .data.toy import TOY_NAMES
    from .diagnostics.likelihood import mean_se, ode_likelihood, pixel_levels
    from .oracle import OracleDenoiser

    if args.process and not args.oracle:
        raise DiffpropError("--process applies to --oracle (a run's process is the one it was trained with)")
    if getattr(args, "diffusers", None) and not args.dataset:
        raise DiffpropError("--diffusers needs --dataset (the data the checkpoint was trained on)")
    if args.dataset and not getattr(args, "diffusers", None):
        raise DiffpropError("--dataset applies to --diffusers in likelihood (a run or an oracle knows its data)")
    if not (args.rtol > 0 and args.atol > 0):
        raise DiffpropError(f"--rtol and --atol must be > 0, got {args.rtol:g} and {args.atol:g}")
    model = f"oracle-{args.oracle}" + (f"-{args.process}" if args.process else "") if args.oracle else "diffusers"
    default = (Path(args.run_dir) / f"likelihood-seed{args.seed}.json" if args.run_dir
               else Path("runs") / f"likelihood-{model}.json")
    out = _writable_out(Path(args.out or default), folder=False)
    denoiser, cfg, info, meta, device = _denoiser_for(args)
    dataset = args.dataset or info["name"]
    shape = info["data_shape"]
    ds = load_dataset(dataset, num_samples=args.num, seed=args.seed, scaler=info.get("scaler"),
                      image_size=shape[-1] if len(shape) == 3 else None)
    if list(ds.data_shape) != list(shape):
        raise DiffpropError(f"--dataset {dataset}: data of shape {tuple(ds.data_shape)} but the model expects "
                            f"{tuple(shape)}")
    gen = torch.Generator().manual_seed(args.seed)
    x = ds.x
    if len(x) > args.num:  # a fixed set (images, files): num of its items at random
        x = x[torch.randperm(len(x), generator=gen)[:args.num]]
    elif len(x) < args.num:
        print(f"diffprop: note: {dataset} has {len(x)} items; evaluating all of them", file=sys.stderr)
    if args.run_dir and dataset in TOY_NAMES and args.seed == cfg.seed:
        print(f"diffprop: note: --seed {args.seed} is the run's training seed, so these points may be training points; "
              f"another --seed draws held-out ones", file=sys.stderr)
    levels = pixel_levels(x) if ds.is_image else None
    if ds.is_image and levels is None:
        raise DiffpropError(f"{dataset}: image values are not on an 8-bit (or 17-level) grid in [-1, 1]; cannot "
                            f"dequantise")
    trace = "exact" if args.exact_trace else "hutchinson" if args.hutchinson else "auto"
    res = ode_likelihood(denoiser, x.to(device), trace=trace, probe=args.probe, rtol=args.rtol, atol=args.atol,
                         levels=levels, generator=gen, batch_size=args.batch_size, progress=not args.quiet)
    summary = {**meta, "dataset": dataset, "seed": args.seed, **res.summary()}
    if ds.scaler is not None:  # standardized columns: log p in the file's units is lower by sum log std
        jac = float(torch.log(torch.tensor(ds.scaler["std"], dtype=torch.float64)).sum())
        summary["nats_data_units"] = mean_se(res.logp - jac)
    if ds.mixture is not None:  # the data's own density at t_min, in closed form
        exact = OracleDenoiser(ds.mixture, denoiser.process).log_prob(res.x, res.t_min).cpu()
        summary["log_q_t_min"], summary["ode_minus_exact"] = mean_se(exact), mean_se(res.logp - exact)
        summary["ode_minus_exact"]["max_abs"] = float((res.logp - exact).abs().max())
    summary["logp"] = [round(float(v), 6) for v in res.logp]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1))
    n, b = summary["nats"], summary["bits_per_dim"]
    how = res.trace + (f" ({res.probe} probe)" if res.probe else "")
    print(f"log-likelihood of {len(x)} {dataset} points at t_min = {res.t_min:g} ({res.options['process']}), "
          f"{how} trace{', dequantised' if levels else ''}:")
    print(f"  {n['mean']:.4f} +- {n['se']:.4f} nats per sample; {b['mean']:.4f} +- {b['se']:.4f} bits/dim")
    if ds.mixture is not None:
        q, d = summary["log_q_t_min"], summary["ode_minus_exact"]
        print(f"  closed form log q_t_min: {q['mean']:.4f} +- {q['se']:.4f} nats; ODE - closed form {d['mean']:.2g} "
              f"+- {d['se']:.2g} (max |.| {d['max_abs']:.2g})")
    print(f"  NFE {res.nfe} ({res.options['method']}, rtol {args.rtol:g}, atol {args.atol:g}), {res.seconds:.1f} s")
    print(f"wrote {out}")


def cmd_export(args) -> None:
    from .export import export_run

    out = export_run(args.run_dir, args.out, ema=not args.no_ema)
    print(f"wrote a diffusers DDPMPipeline to {out} (DDPMPipeline.from_pretrained({str(out)!r}) loads it)")


def cmd_tune(args) -> None:
    from .data import load_dataset, to_data_units
    from .samplers import SAMPLERS
    from .tune import BASES, GRIDS, METHODS, frechet, halves, mixture_kl, pooled_shift, tune

    if args.method not in METHODS:
        raise DiffpropError(f"unknown method {args.method!r}; allowed: {', '.join(METHODS)}")
    if args.sampler not in SAMPLERS:
        raise DiffpropError(f"unknown sampler {args.sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if args.method == "time-shift" and args.sampler not in BASES:
        raise DiffpropError(f"time-shift applies to --sampler {' or '.join(BASES)}, not {args.sampler}")
    if args.cutoff is not None and args.method != "time-shift":
        raise DiffpropError("--cutoff applies to --method time-shift")
    try:
        grid = [float(v) for v in args.grid.split(",")] if args.grid else list(GRIDS[args.method])
    except ValueError:
        raise DiffpropError(f"--grid {args.grid[:40]!r}: expected a comma list of numbers") from None
    denoiser, cfg, data, meta, device = _denoiser_for(args)
    name = data["name"]
    out = _writable_out(Path(args.out or (Path(args.run_dir) / f"tune-{args.method}.json" if args.run_dir else
                                          f"runs/tune-{args.method}-{name}.json")), folder=False)
    ds = load_dataset(name, **({"image_size": data["data_shape"][-1]} if len(data["data_shape"]) == 3 else {}))
    options = {"var_type": denoiser.var_type} if args.sampler == "ddpm" else {}
    if ds.mixture is not None:
        tune_q = eval_q = mixture_kl(ds.mixture)
        quality = "kl"
        if args.method == "time-shift":  # low-dimensional data: pooled variance, matched with the data's share
            options.update(pooled_shift(ds.from_data_units(ds.x)))
    elif ds.is_image:
        from .metrics.features import get_extractor

        extractor = get_extractor(None, tuple(ds.data_shape), dataset_name=name, device=device)
        tune_ref, eval_ref = halves(ds.x)
        tune_q, eval_q = frechet(tune_ref, extractor), frechet(eval_ref, extractor)
        quality = "fd"
    else:
        raise DiffpropError(f"{name}: tune needs a known density (gmm-grid, gmm-ring) or images (digits)")
    if args.method == "time-shift" and args.cutoff is not None:
        options["shift_cutoff"] = args.cutoff
    result = tune(denoiser, tuple(data["data_shape"]), args.method, tune_quality=tune_q, eval_quality=eval_q,
                  quality_name=quality, sampler=args.sampler, steps=args.steps, grid=grid, num=args.num,
                  tune_seed=args.tune_seed, eval_seed=args.seed, options=options, device=device,
                  to_data=lambda x: to_data_units(x, data.get("scaler")), progress=not args.quiet)
    result.update(model=meta["model"], dataset=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    ev = result["evaluation"]
    print(f"{args.method}: chose {result['chosen']:g} of {len(grid)} values (tuning seed {args.tune_seed}); on seed "
          f"{args.seed} {quality} {ev['baseline'][quality]:.4g} (plain) -> {ev['chosen'][quality]:.4g}")
    print(f"wrote {out}")


def cmd_reproduce(args) -> None:
    from .experiments import get_experiment, listing

    if args.list or not args.name:
        print(listing())
        return
    exp = get_experiment(args.name)
    if args.scale not in exp.SCALES:
        raise DiffpropError(f"{args.name}: scale {args.scale!r} is not available; allowed: {', '.join(exp.SCALES)}")
    options = {k: v for k, v in (("data", args.data), ("inception_weights", args.inception_weights),
                                 ("force", args.force), ("jobs", args.jobs if args.jobs > 1 else None)) if v}
    takes = inspect.signature(exp.run).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in takes.values()):
        refused = [f"--{k.replace('_', '-')}" for k in options if k not in takes]
        if refused:
            why = "it trains its runs one after another" if refused == ["--jobs"] else \
                "it has its own fixed data and scale"
            raise DiffpropError(f"{args.name} does not take {', '.join(refused)} ({why})")
    if args.methods is not None:
        if "methods" not in takes:
            raise DiffpropError(f"{args.name} does not take --methods (only reduce compares chosen methods)")
        options["methods"] = args.methods
    folder = f"{args.name}-{args.scale}" + (f"-{args.data.split(':')[0]}" if args.data else "")
    report = exp.run(_writable_out(Path(args.out or Path("runs") / "reproduce" / folder), folder=True), args.scale,
                     args.seeds,
                     progress=not args.quiet, **options)
    print(f"report: {report}")


def cmd_report(args) -> None:
    from .report import write_report_pages

    md, html = write_report_pages([Path(d) for d in args.dirs], _writable_out(Path(args.out), folder=False))
    print(f"wrote {md} and {html}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    mode = "quick" if args.quick else "full" if args.full else "default"
    report = run_demo(_writable_out(Path(args.out), folder=True), mode, progress=not args.quiet)
    print(f"report: {report}")


def cmd_bench(args) -> None:
    from .bench import BENCHMARKS, run_benchmark

    if args.name not in BENCHMARKS:
        raise DiffpropError(f"unknown benchmark {args.name!r}; allowed: {', '.join(BENCHMARKS)}")
    out = _writable_out(Path(args.out), folder=False) if args.out else None
    result = run_benchmark(args.name)
    text = json.dumps(result, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)


def _add_model_source(p: argparse.ArgumentParser, dataset_help: str) -> None:
    """The model a command reads (exactly one of: a run folder, --oracle, --diffusers) and where it runs."""
    p.add_argument("run_dir", nargs="?", help="run folder written by `diffprop train`")
    p.add_argument("--oracle", metavar="DATASET", help="the exact denoiser of a Gaussian-mixture dataset")
    p.add_argument("--eps-scale", type=_finite(), help="oracle: multiply its noise prediction by C (default 1)")
    p.add_argument("--eps-bias", type=_finite(), help="oracle: add B to every coordinate of it (default 0)")
    p.add_argument("--diffusers", metavar="DIR", help="a local diffusers UNet2DModel + DDPMScheduler folder")
    p.add_argument("--dataset", help=dataset_help)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``diffprop: error: ...``) and exit status 2."""

    def error(self, message):
        self.exit(2, f"diffprop: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="diffprop", description="Train, sample and diagnose diffusion models; "
                                "measure and reduce error propagation along their sampling chains.",
                epilog="Papers are cited by author and year; docs/references.md has the full citations.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a denoiser from a TOML config",
                       description="Train a denoiser. The resolved config, checkpoints, log.jsonl and loss.png "
                       "go to the run folder.")
    t.add_argument("config", help="TOML config (see configs/ and the Config dataclasses in diffprop.config)")
    t.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set train.steps=500 (repeatable)")
    t.add_argument("--out", help="run folder (default: runs/CONFIG_NAME)")
    t.add_argument("--resume", metavar="latest|CKPT", help="continue from the newest or a given checkpoint")
    t.add_argument("--init-from", metavar="DIR", help="fine-tune: start from the weights of a diffusers pipeline / "
                   "UNet folder, a run folder (its EMA weights) or a checkpoint folder; the config must name the same "
                   "model, schedule and parameterization (optimizer and EMA start afresh; see configs/finetune-epdm.toml)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained run or an exact oracle",
                       description="Draw samples into an .npz (`samples`, `meta`) plus a picture of them.")
    _add_model_source(s, "with --diffusers: the data it was trained on, checked against the U-Net's shape (optional: "
                      "the U-Net sets the sample shape)")
    from .processes import GRIDS, PROCESSES
    from .samplers import SAMPLERS

    s.add_argument("--sampler", choices=tuple(SAMPLERS), help="; ".join(f"{k}: {v.about}" for k, v in SAMPLERS.items())
                   + " (default: the run's sample.sampler)")
    s.add_argument("--steps", type=_positive(int), help="sampling steps (default: the sampler's: T for ddpm, em and "
                   "pc on the discrete chain, 50 for ddim, 25 for heun, ...)")
    s.add_argument("--process", choices=tuple(PROCESSES), help="--oracle: the noise process the exact model runs on "
                   "(default: discrete, the run's linear schedule with T = 1000; a run knows its own)")
    s.add_argument("--noise", choices=("sample", "stream"), help="sample: each sample's noise depends only on the "
                   "seed and its index (any batch size gives the same samples); stream: one generator in batch order, "
                   "as diffusers' pipelines draw (default: stream for --diffusers, sample otherwise)")
    s.add_argument("--eta", type=_finite(least=0.0), help="DDIM stochasticity (0: deterministic)")
    s.add_argument("--clipped-eps", action="store_true",
                   help="DDIM with x0 clipping: step with the noise implied by the clipped x0, not the model's "
                   "(diffusers' use_clipped_model_output; default: the run's sample.clipped_eps)")
    s.add_argument("--spacing", metavar="GRID", choices=(*SPACINGS, *GRIDS), help="the time grid: on the discrete "
                   "chain even = round(linspace(1, T, steps)), or linspace, leading, trailing = diffusers' "
                   "timestep_spacing; on any process uniform, quadratic, edm (Karras et al. 2022, rho = 7) (default: "
                   "the run's sample.spacing, else the sampler's own; with --diffusers, ddpm and ddim, the "
                   "scheduler's)")
    _add_sampler_flags(s)
    s.add_argument("--eps-scaling", type=_eps_scaling, metavar="B[,K]", help="epsilon scaling (Ning et al. 2024), "
                   "any sampler: the model's noise prediction divided by lambda(t) = B + K t, t the timestep "
                   "(default: off; B slightly above 1, e.g. 1.005; K default 0). Not --eps-scale, which multiplies "
                   "the oracle's prediction to put a defect in it")
    s.add_argument("--num", type=_positive(int, MAX_SAMPLES), help=f"number of samples, at most {MAX_SAMPLES} "
                   f"(default: the run's sample.num)")
    s.add_argument("--batch-size", type=_positive(int), help="sampling batch size")
    s.add_argument("--seed", type=_seed, default=0, help="seed of x_T and all sampling noise")
    s.add_argument("--format", choices=("npz", "png-folder"), default="npz",
                   help="npz: samples + meta and a picture of them; png-folder (image data): one 8-bit PNG per "
                   "image and meta.json in a new folder, as torch-fidelity and clean-fid read it")
    s.add_argument("--out", help="output .npz or folder (default: RUN_DIR/samples/SAMPLER-STEPS-seedS[.npz])")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("evaluate", help="metrics of a samples file against a dataset",
                       description="Gaussian-mixture data: mode_coverage, high_quality_fraction (within 4 std of "
                       "a mean), mode weights, within-mode spread, exact log-likelihood, mmd_rbf; images: fd, kid "
                       "(unscaled MMD^2 as torch-fidelity reports it, with kid_std, kid_se), precision, recall, f1 (Kynkaanniemi et al. 2019, k = 3) and mmd_rbf "
                       "on features, recording the extractor, its weights hash "
                       "and preprocessing; other data: mmd_rbf, sliced_wasserstein.")
    e.add_argument("samples", help=".npz written by `diffprop sample`")
    e.add_argument("--dataset", required=True, help="dataset the samples should match, e.g. gmm-grid")
    e.add_argument("--features", metavar="NAME", help="images: digits-classifier (default for digits; trained once "
                   "and cached in $DIFFPROP_CACHE or ~/.cache/diffprop), inception (default with --inception-weights), "
                   "pixels or random-projection")
    e.add_argument("--inception-weights", metavar="PATH", help="local FID Inception-v3 weights "
                   "(pt_inception-2015-12-05-6726825d.pth, SHA-256 checked; needs diffprop[fid]); never downloaded")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--num-ref", type=_positive(int), metavar="N",
                   help="images: compare with N reference images drawn at random (default: all of the dataset)")
    e.add_argument("--out", help="output JSON (default: next to the samples)")
    e.set_defaults(fn=cmd_evaluate)

    m = sub.add_parser("measure", help="error-propagation curves of a model (Li & van der Schaar 2024, Sec. 4)",
                       description="Cumulative, modular and bootstrapped MMD errors along the sampling chain, "
                       "the amplification factor (Li & van der Schaar 2024, Eq. 6) and a permutation noise floor, "
                       "per kernel. Writes propagation.csv, propagation.png and summary.json.")
    _add_model_source(m, "the data to compare with (default: the run's; required with --diffusers)")
    m.add_argument("--num", type=_positive(int), default=1000, help="N = M samples per side (default 1000)")
    from .processes import PROCESSES
    from .samplers import SAMPLERS

    m.add_argument("--sampler", default="ddpm", choices=tuple(SAMPLERS), help="the chain measured, recorded at every "
                   "time it visits (default: ddpm over every timestep; see `diffprop sample --help`)")
    m.add_argument("--steps", type=_positive(int), help="the sampler's number of steps (default: its own)")
    m.add_argument("--process", choices=tuple(PROCESSES), help="--oracle: the noise process the exact model runs on "
                   "(default: discrete, the default config's linear schedule with T = 1000; a run knows its own)")
    m.add_argument("--spacing", metavar="GRID", help="the sampler's time grid (default: its own): even, linspace, "
                   "leading, trailing (discrete chain), uniform, quadratic, edm")
    m.add_argument("--grid", default="20", help="number of step times measured (log-spaced among the times the "
                   "chain steps from), or a comma list of them (on DDPM's full chain: timesteps in 1..T; default 20)")
    m.add_argument("--kernels", default="rbf,laplace,imq",
                   help="comma list of rbf, laplace, imq, rbf-mix; KERNEL@H fixes the bandwidth (e.g. rbf@0.1)")
    m.add_argument("--bootstrap-steps", type=_positive(int), default=5,
                   help="L of the bootstrapped chain (Li & van der Schaar 2024, Sec. 5.2)")
    m.add_argument("--permutations", type=_positive(int, 10000), default=100,
                   help="permutations for the noise floor, at most 10000 (p-values to 1e-4)")
    m.add_argument("--repeats", type=_positive(int, 100), default=1,
                   help="repeat with fresh seeds; columns become means, *_std columns their spread")
    m.add_argument("--batch-size", type=_positive(int), help="sampling batch size")
    m.add_argument("--seed", type=_seed, default=0)
    m.add_argument("--out", help="output folder (default: RUN_DIR/measure or runs/measure)")
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    m.set_defaults(fn=cmd_measure)

    from .processes import PROCESSES

    lk = sub.add_parser("likelihood", help="exact log-likelihood of data points by the probability-flow ODE",
                        description="log p(x) of data points under a model's probability-flow ODE with the "
                        "instantaneous change of variables (Chen et al. 2018; Song et al. 2021, score SDE, Sec. 4.3), "
                        "integrated by RK45 from the process's t_min to t_max: the density at t_min of the model's "
                        "flow (the data read as x(t_min), as the score SDE does). Divergence by the exact trace in up "
                        "to 64 dimensions, else Hutchinson's estimate (Grathwohl et al. 2019). Nats per sample and "
                        "bits/dim; images are dequantised uniformly over their 8-bit bins (Theis et al. 2016). With "
                        "Gaussian-mixture data the closed-form log q_t_min(x) is printed beside. Writes JSON.")
    _add_model_source(lk, "with --diffusers: the data it was trained on (required)")
    lk.add_argument("--num", type=_positive(int, MAX_SAMPLES), default=256,
                    help="number of data points (default 256): fresh draws of generated data, else a random subset")
    lk.add_argument("--seed", type=_seed, default=0, help="seed of the data points, probes and dequantisation noise")
    tr = lk.add_mutually_exclusive_group()
    tr.add_argument("--exact-trace", action="store_true", help="exact divergence (one vector-Jacobian product per "
                    "dimension; default up to 64 dimensions)")
    tr.add_argument("--hutchinson", action="store_true", help="Hutchinson's divergence estimate (default above 64 "
                    "dimensions)")
    lk.add_argument("--probe", choices=("rademacher", "gaussian"), default="rademacher",
                    help="Hutchinson probe distribution (default rademacher)")
    lk.add_argument("--rtol", type=_finite(), default=1e-5, help="RK45 relative tolerance (default 1e-5)")
    lk.add_argument("--atol", type=_finite(), default=1e-5, help="RK45 absolute tolerance (default 1e-5)")
    lk.add_argument("--process", choices=tuple(PROCESSES), help="--oracle: the noise process (default: the "
                    "discrete chain of the default config)")
    lk.add_argument("--batch-size", type=_positive(int), help="points per ODE system (default: all at once)")
    lk.add_argument("--out", help="output JSON (default: RUN_DIR/likelihood-seedS.json or "
                    "runs/likelihood-oracle-DATASET[-PROCESS].json)")
    lk.add_argument("--quiet", action="store_true", help="no progress bar")
    lk.set_defaults(fn=cmd_likelihood)

    x = sub.add_parser("export", help="write a U-Net run as a diffusers DDPMPipeline folder",
                       description="Write a run's UNet2DModel (EMA weights unless --no-ema) and a DDPMScheduler with "
                       "its betas, prediction_type, variance_type and clipping, in DDPMPipeline.save_pretrained's "
                       "layout (safetensors). MLP and SMD runs are not diffusers models and are refused.")
    x.add_argument("run_dir", help="run folder written by `diffprop train` (a U-Net run)")
    x.add_argument("--out", required=True, help="the pipeline folder to write (new or empty)")
    x.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    x.set_defaults(fn=cmd_export)

    from .demo_recipes import RECIPES

    d = sub.add_parser("demo", help="the main job: a vanilla DDPM, one with the EPDM regularizer and one with the "
                       "best error-reduction method, measured against the exact oracle, evaluated and reported",
                       description="Train a vanilla DDPM, one with the cumulative-error regularizer of Li & van der "
                       "Schaar (2024) and one with the best method `diffprop reproduce reduce` found, on "
                       "Gaussian-mixture data; sample and measure their error propagation beside the exact oracle, "
                       "evaluate, and write report.md (with the verdict), report.html and plots. Default: gmm-grid, "
                       f"T = 1000, one base model fine-tuned three ways (about {RECIPES['default'].minutes:g} min on 2 "
                       "idle CPU cores). Finished training runs in --out are reused.")
    d.add_argument("--out", default="runs/demo", help="report folder (default: runs/demo)")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help=f"gmm-ring, a smaller net (about {RECIPES['quick'].minutes:g} "
                      "min on 2 idle CPU cores)")
    size.add_argument("--full", action="store_true", help="gmm-grid, every model trained from scratch for 12k steps "
                      f"(about {RECIPES['full'].minutes:g} min on 2 idle CPU cores)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(fn=cmd_demo)

    tn = sub.add_parser("tune", help="pick epsilon scaling's lambda or the time-shift window on held-out draws",
                        description="Search the one parameter of a training-free exposure-bias fix: epsilon "
                        "scaling's lambda = B (Ning et al. 2024) or the time-shift sampler's window (Li et al. 2024), "
                        "choosing the value of least exact KL (Gaussian-mixture data) or Frechet distance in the "
                        "digits classifier's features (digits; half the data) on samples of --tune-seed, then "
                        "scoring the plain sampler and the chosen value on samples of --seed (and the other half of "
                        "the data). Writes JSON: the grid, each value's quality, the choice, the evaluation.")
    _add_model_source(tn, "with --diffusers: the data it was trained on (required)")
    tn.add_argument("--method", required=True, choices=("eps-scaling", "time-shift"), help="the fix to tune")
    tn.add_argument("--sampler", default="ddim", help="the sampler fixed: any for eps-scaling, ddpm or ddim for "
                    "time-shift (default ddim)")
    tn.add_argument("--steps", type=_positive(int), help="sampling steps (default: the sampler's)")
    tn.add_argument("--grid", metavar="V1,V2,...", help="values searched (default: B in 0.9 .. 1.1 for eps-scaling, "
                    "windows 0, 2, 4, .., 256 for time-shift)")
    tn.add_argument("--cutoff", type=_positive(int), help="time-shift: no shift at or below this timestep "
                    "(default 0.3 T, the published 300 of 1000)")
    tn.add_argument("--num", type=_positive(int, MAX_SAMPLES), default=1000, help="samples per value (default 1000)")
    tn.add_argument("--tune-seed", type=_seed, default=1, help="seed of the draws the value is chosen on (default 1)")
    tn.add_argument("--seed", type=_seed, default=0, help="seed of the final evaluation's draws (default 0)")
    tn.add_argument("--out", help="output JSON (default: RUN_DIR/tune-METHOD.json or runs/tune-METHOD-DATASET.json)")
    tn.add_argument("--quiet", action="store_true", help="no progress bars")
    tn.set_defaults(fn=cmd_tune)

    r = sub.add_parser("reproduce", help="reproduce a paper's table or figure (see --list)",
                       description="Run one of the papers' experiments at a scale and write its table (CSV, "
                       "Markdown), figures and report.md (the claim, what we measured, whether it reproduces).")
    r.add_argument("name", nargs="?", help="experiment name (see --list)")
    r.add_argument("--list", action="store_true", help="list the experiments with their estimated times")
    r.add_argument("--scale", default="small", help="tiny (minutes, what the tests run), small (about an hour on "
                   "2 CPU cores) or paper (the papers' data and U-Net; GPUs; prints its GPU-hour estimate first)")
    r.add_argument("--seeds", type=_positive(int, 100), help="number of seeds, at most 100 (default: the scale's)")
    r.add_argument("--data", metavar="DATASET", help="train on this dataset instead of the scale's (required at "
                   "paper scale, e.g. cifar10:PATH/cifar-10-batches-py); images get the U-Net and FID-style metrics")
    r.add_argument("--inception-weights", metavar="PATH", help="FID Inception-v3 weights for image data other than "
                   "digits (pt_inception-2015-12-05-6726825d.pth; never downloaded)")
    r.add_argument("--force", action="store_true", help="run a paper-scale reproduction without a GPU")
    r.add_argument("--out", help="output folder (default: runs/reproduce/NAME-SCALE, with -DATA when --data is given)")
    r.add_argument("--jobs", type=_positive(int, 64), default=1, help="train the reproduction's independent runs in "
                   "this many processes at once, each with its share of the CPU threads (default 1); the weights "
                   "do not depend on it, the training times they record do")
    r.add_argument("--methods", help="reduce only: the methods to compare with vanilla, comma-separated (default: "
                   "all; `reproduce --list` names them), e.g. to add seeds to the promising ones")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=cmd_reproduce)

    g = sub.add_parser("report", help="gather reproduction folders into one Markdown and HTML page",
                       description="Collect the report.md, tables and figures of `diffprop reproduce` folders into "
                       "one Markdown page (image links relative to it) and a self-contained HTML page beside it "
                       "(images embedded). Reports are untrusted: a figure must be an image file inside its folder, "
                       "raw HTML stays text, and only http(s) and relative links are kept.")
    g.add_argument("dirs", nargs="+", metavar="DIR", help="folders written by `diffprop reproduce`")
    g.add_argument("--out", default="runs/report.md", help="the Markdown page (default: runs/report.md); the "
                   "HTML page gets the same name with .html")
    g.set_defaults(fn=cmd_report)

    b = sub.add_parser("bench", help="performance benchmarks (JSON)",
                       description="Timings measured side by side in one run, written as JSON.")
    b.add_argument("name", help="train-overhead (trainer vs bare loop), mmd (chunked vs full-matrix MMD, "
                   "memory), measure (full measure on digits, MMD share of the time, time over the chain's), "
                   "samplers (sampling driver vs a hand-written loop; DDPM/DDIM vs diffusers' scheduler loop on one "
                   "UNet), regularizers (step time of each regularizer relative to vanilla), smd (time and memory per "
                   "step of each SMD variant against the plain backbone), metrics (FD, KID, precision/recall at 2048 "
                   "dimensions against torch-fidelity's functions), crash (kill -9 tiny training runs at random "
                   "moments and inside checkpoint writes, resume each, compare bit for bit with an uninterrupted run)")
    b.add_argument("--out", help="also write the JSON here")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except DiffpropError as e:
        return _fail(str(e))
    except OSError as e:  # what the machine refused: a full disk, a folder made read-only or removed meanwhile
        return _fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else f"{type(e).__name__}: {e}")
    except (MemoryError, RuntimeError) as e:
        torch = sys.modules.get("torch")  # the allocator's refusal (CPU: a RuntimeError saying so; CUDA: its own type)
        if not (isinstance(e, MemoryError) or "can't allocate memory" in str(e)
                or (torch is not None and isinstance(e, torch.OutOfMemoryError))):
            raise
        return _fail("out of memory: ask for less (--num, --batch-size, train.batch_size, a smaller model or data)")
    except KeyboardInterrupt:
        print("diffprop: interrupted", file=sys.stderr)
        return 130
    return 0


def _fail(message: str) -> int:
    print("diffprop: error: " + " ".join(message.splitlines()), file=sys.stderr)  # one line, whatever a path holds
    return 2


if __name__ == "__main__":
    sys.exit(main())
