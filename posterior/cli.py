"""The ``posterior`` command line: ``demo``, ``run CONFIG.toml``, ``benchmark NAME``, ``train NAME``.

``posterior demo`` is the main job on embedded defaults: box inpainting of a held-out digit with the
bundled digits prior, by AFDPS (weighted particles of independent SMC runs) and DPS (the fast
baseline), each written as a run report (sample grid, mean / std / interval-width maps, diagnostics
figures, ``report.md``, the saved result) with an ArviZ summary. Offline.

``posterior run CONFIG.toml`` runs one sampler on one problem declared in a file::

    [prior]
    name = "digits"                 # a bundled prior or a weight file

    [operator]
    type = "inpainting"             # inpainting | downsample | blur | identity
    top = 0                         # inpainting: the hidden box
    left = 0
    height = 8
    width = 16

    [noise]
    sigma = 0.05                    # Gaussian noise

    [truth]
    dataset = "digits"              # held-out images: digits | phantoms; y is simulated from one
    index = 0

    [sampler]
    name = "AFDPS"                  # any class of posterior.samplers; other keys are its fields
    steps = 100

    [run]
    num_samples = 32
    chains = 8
    output = "runs/inpainting"
    checkpoint_every = 10           # optional: write output/checkpoint.pt every 10 steps (--resume continues)
    max_batch = 256                 # optional: network micro-batches of at most 256 rows

Every key is checked; an unknown or mistyped one is an error that names it (``sampler.stepz``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import time
import tomllib
from pathlib import Path

import torch

BENCHMARKS = ("gmm", "cost", "images", "dehazing", "calibration", "priors", "mcmc_digits", "gpu_check")
SCHEMA = {  # section -> allowed keys (the sampler's own fields are checked against its class)
    "prior": {"name"},
    "operator": {"type", "top", "left", "height", "width", "factor", "std"},
    "noise": {"sigma"},
    "truth": {"dataset", "index"},
    "sampler": None,
    "run": {"num_samples", "chains", "output", "checkpoint_every", "max_batch"},
}
OPERATORS = {
    "inpainting": ({"top", "left", "height", "width"}, lambda ops, s, c: ops.Inpainting.box(s, **c)),
    "downsample": ({"factor"}, lambda ops, s, c: ops.Downsample(s, c["factor"])),
    "blur": ({"std"}, lambda ops, s, c: ops.Blur.gaussian(s, std=c["std"])),
    "identity": (set(), lambda ops, s, c: ops.Identity(s)),
}


class ConfigError(ValueError):
    """A configuration file that cannot run; the message names the field."""


def _held_out(dataset: str, index: int, size: int) -> torch.Tensor:
    from posterior import data

    if dataset == "digits":
        images = data.digits("test", size=size)
    elif dataset == "phantoms":
        images = data.phantoms(index + 1, size, seed=10_000)
    else:
        raise ConfigError(f"truth.dataset: unknown dataset {dataset!r}; expected 'digits' or 'phantoms'")
    if not 0 <= index < len(images):
        raise ConfigError(f"truth.index: {index} is outside 0..{len(images) - 1}")
    return images[index]


def load_config(path: str | Path, device: str = "cpu") -> dict:
    """Read and validate a run file: the objects to run, or a :class:`ConfigError` naming the field."""
    import operators as ops
    import posterior as post

    try:
        config = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    for section, value in config.items():
        if section not in SCHEMA:
            raise ConfigError(f"{section}: unknown section; expected {sorted(SCHEMA)}")
        allowed = SCHEMA[section]
        for key in value if allowed is not None else ():
            if key not in allowed:
                raise ConfigError(f"{section}.{key}: unknown field; expected one of {sorted(allowed)}")
    for section in ("prior", "operator", "noise", "truth", "sampler"):
        if section not in config:
            raise ConfigError(f"{section}: missing section")

    def field(section: str, key: str, kind, default=None):
        value = config.get(section, {}).get(key, default)
        if value is None:
            raise ConfigError(f"{section}.{key}: missing")
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"{section}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    def positive(key: str, default: int) -> int:
        value = field("run", key, int, default)
        if value < 0 or value == 0 and key in config.get("run", {}):
            raise ConfigError(f"run.{key}: must be a positive int, got {value}")
        return value

    try:
        prior = post.priors.pretrained(field("prior", "name", str), device=device)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError(f"prior.name: {err}") from err
    kind = field("operator", "type", str)
    if kind not in OPERATORS:
        raise ConfigError(f"operator.type: unknown operator {kind!r}; expected one of {sorted(OPERATORS)}")
    needed, build = OPERATORS[kind]
    given = set(config["operator"]) - {"type"}
    if given != needed:
        raise ConfigError(f"operator: {kind} takes fields {sorted(needed)}, got {sorted(given)}")
    try:
        operator = build(ops, prior.event_shape, {k: config["operator"][k] for k in needed})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"operator: {err}") from err
    sigma = field("noise", "sigma", (int, float))
    if not sigma > 0:
        raise ConfigError(f"noise.sigma: must be > 0, got {sigma}")
    truth = _held_out(field("truth", "dataset", str), field("truth", "index", int, 0), prior.event_shape[-1])
    if tuple(truth.shape) != tuple(prior.event_shape):
        raise ConfigError(
            f"truth: an image of shape {tuple(truth.shape)} for a prior of shape {prior.event_shape}"
        )
    sampler_config = dict(config["sampler"])
    name = sampler_config.pop("name", None)
    cls = getattr(post.samplers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, post.samplers.Sampler)):
        raise ConfigError(f"sampler.name: unknown sampler {name!r}; expected one of {post.samplers.__all__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in sampler_config:
        if key not in fields:
            raise ConfigError(f"sampler.{key}: {name} has no field {key!r}; its fields are {sorted(fields)}")
    try:
        sampler = cls(**sampler_config)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sampler: {err}") from err
    return {
        "prior": prior,
        "operator": operator,
        "noise": ops.GaussianNoise(float(sigma)),
        "truth": truth,
        "sampler": sampler,
        "num_samples": field("run", "num_samples", int, 16),
        "chains": field("run", "chains", int, 4),
        "output": Path(field("run", "output", str, f"runs/{Path(path).stem}")),
        "checkpoint_every": positive("checkpoint_every", 0),
        "max_batch": positive("max_batch", 0) or None,
    }


def solve(
    config: dict,
    seed: int,
    device: str,
    progress: bool,
    directory: Path | None = None,
    resume: bool = False,
) -> Path:
    """Simulate ``y`` from the truth, run the sampler, write the run report; returns ``report.md``.

    With ``checkpoint_every`` the run's state goes to ``checkpoint.pt`` in the output folder, which
    ``resume`` continues from."""
    import posterior as post
    from posterior import plots

    prior = config["prior"]
    truth = config["truth"].to(device)
    y = config["noise"].sample(config["operator"](truth[None]), torch.Generator(device).manual_seed(seed))[0]
    problem = post.InverseProblem(config["operator"], config["noise"], y)
    directory = directory or config["output"]
    checkpoint = directory / "checkpoint.pt"
    if resume and not checkpoint.exists():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint} (set run.checkpoint_every to write one)")
    result = config["sampler"].sample(
        problem,
        prior,
        config["num_samples"],
        chains=config["chains"],
        seed=seed,
        progress=progress,
        checkpoint=checkpoint if config.get("checkpoint_every") else None,
        checkpoint_every=config.get("checkpoint_every") or 10,
        resume=checkpoint if resume else None,
        max_batch=config.get("max_batch"),
    )
    path = plots.write_report(
        result, directory, truth=truth.cpu(), title=f"{result.sampler}: {directory.name}"
    )
    print(result.verdict.line)
    return path


def _demo(args: argparse.Namespace) -> None:
    import operators as ops
    import posterior as post

    start = time.perf_counter()
    prior = post.priors.pretrained("digits", device=args.device)
    base = {
        "prior": prior,
        "operator": ops.Inpainting.box(prior.event_shape, 0, 0, 8, 16),  # the upper half hidden
        "noise": ops.GaussianNoise(0.05),
        "truth": _held_out("digits", 3, 16),
    }
    runs = {
        "afdps": (post.samplers.AFDPS(steps=100), 32, 8),
        "dps": (post.samplers.DPS(steps=100), 16, 4),
    }
    for name, (sampler, num_samples, chains) in runs.items():
        config = dict(base, sampler=sampler, num_samples=num_samples, chains=chains)
        path = solve(config, args.seed, args.device, not args.no_progress, args.out / name)
        print(f"{name}: report written to {path}")
    print(f"done in {time.perf_counter() - start:.0f} s; open {args.out}/*/report.md")


def _run(args: argparse.Namespace) -> None:
    try:
        config = load_config(args.config, args.device)
        path = solve(config, args.seed, args.device, not args.no_progress, args.out, args.resume)
    except ConfigError as err:
        sys.exit(f"posterior run: {args.config}: {err}")
    print(f"report written to {path}")


def _benchmark(args: argparse.Namespace) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.name}.py"
    if not script.exists():
        sys.exit(f"posterior benchmark: {script} not found; benchmarks run from a source checkout")
    spec = importlib.util.spec_from_file_location(f"benchmark_{args.name}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    module.main(args.args)


def _train(args: argparse.Namespace) -> None:
    from posterior.priors.training import train

    paths = train(
        args.name,
        args.out,
        steps=args.steps,
        classifier_steps=args.classifier_steps,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
        device=args.device,
    )
    for kind, path in paths.items():
        print(f"{kind} written to {path}")


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: fastest on shared CPUs)"
    )
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser = argparse.ArgumentParser(
        prog="posterior", description="Posterior sampling with diffusion priors."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", parents=[common], help="box inpainting of a digit by AFDPS and DPS, offline"
    )
    demo.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    demo.set_defaults(run=_demo)

    run = commands.add_parser("run", parents=[common], help="run the problem and sampler of a TOML file")
    run.add_argument(
        "config", type=Path, help="the run file (see `python -c 'import posterior.cli; help(posterior.cli)'`)"
    )
    run.add_argument("--out", type=Path, default=None, help="output folder (default: the file's run.output)")
    run.add_argument("--resume", action="store_true", help="continue from checkpoint.pt in the output folder")
    run.set_defaults(run=_run)

    bench = commands.add_parser("benchmark", parents=[common], help="run a script of benchmarks/")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (see its --help)")
    bench.set_defaults(run=_benchmark)

    train = commands.add_parser(
        "train", parents=[common], help="train a bundled prior and its noise-level classifier"
    )
    train.add_argument("name", help="recipe: digits, phantoms, us-tissue or us-haze")
    train.add_argument("--out", type=Path, default=Path("trained"), help="output folder (default: trained/)")
    train.add_argument(
        "--steps", type=int, default=None, help="denoiser steps (default: the recipe's; 0 skips)"
    )
    train.add_argument(
        "--classifier-steps", type=int, default=None, help="classifier steps (default: the recipe's; 0 skips)"
    )
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.set_defaults(run=_train)

    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run(args)


if __name__ == "__main__":
    main()
