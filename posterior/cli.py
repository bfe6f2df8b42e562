"""The ``posterior`` command line: ``demo``, ``run CONFIG.toml``, ``benchmark NAME``, ``train NAME``.

``posterior demo`` is the main job on embedded defaults: box inpainting of a held-out digit with the
bundled digits prior, by AFDPS (weighted particles of independent SMC runs) and DPS (the fast
baseline), each written as a run report (sample grid, mean / std / interval-width maps, diagnostics
figures, ``report.md``, the saved result) with an ArviZ summary. Offline.

``posterior run CONFIG.toml`` runs one sampler on one problem declared in a file::

    [prior]
    name = "digits"                 # a bundled prior or a weight file; or factory = "module:make_prior"

    [operator]
    type = "inpainting"             # inpainting | blur | downsample | radon | mri | matrix | identity
    top = 0                         # inpainting: the hidden box; or function = "module:make_operator"
    left = 0
    height = 8
    width = 16

    [noise]
    sigma = 0.05                    # Gaussian noise; or type = poisson | laplace | student_t, or a Pyro model

    [measurement]
    file = "y.npy"                  # optional: your y (.npy, .safetensors, an image with its range)

    [truth]
    dataset = "digits"              # held-out images: digits | phantoms, or file = "x.npy"; y is
    index = 0                       # simulated from it when there is no measurement

    [sampler]
    name = "AFDPS"                  # any class of posterior.samplers; other keys are its fields
    steps = 100

    [run]
    num_samples = 32
    chains = 8
    output = "runs/inpainting"
    checkpoint_every = 10           # optional: write output/checkpoint.pt every 10 steps (--resume continues)
    max_batch = 256                 # optional: network micro-batches of at most 256 rows

A job of many measurements (``measurement.files = "scans/*.npy"``, or a ``file`` with ``stacked =
true``) runs one problem per measurement through :func:`posterior.distributed.run_many`: groups of
``run.batch`` consecutive measurements, one batched task each with seed ``--seed +`` the index of its
first; ``--workers N`` local processes (or Ray tasks, ``--backend ray``), which give the same draws. It
writes a run report in ``output/<name>/`` for each and ``summary.csv`` and ``summary.md`` over them. A
task that raises makes its measurements' rows errors, not the job's end; the others still run, and the
command then exits with status 1. ``--resume`` runs only the measurements without a complete report.

The sections and fields are declared in :mod:`posterior.jobs` (``SCHEMA``), which builds the problem;
docs/cli.md lists them, generated from it.
Every key and the type of every value are checked when the file is read, before anything runs; an
unknown, mistyped or ill-typed one is an error that names it (``sampler.stepz``,
``run.num_samples must be an int, got '16' (str)``, ``sampler: AFDPS: steps must be an int, got '3' (str)``).

A user error never ends in a traceback: :func:`main` prints one line on stderr and exits with status 2
for a job that cannot run as written (the file, its fields, the options, the files it names) and 1 for
a run that started and failed (e.g. a NaN stop); ``--debug`` shows the traceback instead. ``run``,
``demo`` and ``train`` refuse to write over the results of an earlier run unless ``--overwrite`` (or
``--resume``) is given, and ``run`` copies the job file into the output folder as ``job.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shutil
import sys
import time
import tomllib
import typing
from pathlib import Path

from posterior import jobs
from posterior.jobs import ConfigError

# torch (and the package's samplers) are imported inside the commands, so that `posterior --help`
# answers at once (tests/posterior/test_cli_help.py)
if typing.TYPE_CHECKING:
    import torch

BENCHMARKS = (
    "gmm",
    "cost",
    "images",
    "dehazing",
    "calibration",
    "priors",
    "mcmc_digits",
    "parameters",
    "acquisition",
    "phantoms",
    "volumes",
    "gpu_check",
)
JOB = "job.toml"  # the copy of the job file in the output folder
RUN_FILES = ("checkpoint.pt", "report.md", "samples.safetensors", "summary.csv", "summary.png", "draws.png",
             "convergence.png", "smc_ess.png", "ranks.png", "coverage.png")  # what a run writes (job.toml aside)
SUMMARY_FILES = ("summary.csv", "summary.md")  # what a run of many measurements writes besides its runs
ROW = "row.json"  # a measurement's row of the summary, written after its report: its run is complete
MEASUREMENT_FILES = (*RUN_FILES, ROW)  # what the run of one of many measurements writes
BAD_JOB = (ValueError, TypeError, KeyError, OSError)  # exit 2: the job cannot run as written
FAILED_RUN = (ArithmeticError, RuntimeError, MemoryError)  # exit 1: the run started and failed


def _samplers() -> dict:
    """The samplers a job may name: the classes of :mod:`posterior.samplers`, less the bases of others."""
    import posterior as post

    classes = [getattr(post.samplers, name) for name in post.samplers.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, post.samplers.Sampler)]
    return {c.__name__: c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)}


def _held_out(dataset: str, index: int, size: int) -> torch.Tensor:
    from posterior import data

    if dataset == "digits":
        images = data.digits("test", size=size)
    elif dataset == "phantoms":
        if index < 0:
            raise ConfigError(f"truth.index: {index} is negative")
        images = data.phantoms(index + 1, size, seed=10_000)
    else:
        raise ConfigError(f"truth.dataset: unknown dataset {dataset!r}; expected 'digits' or 'phantoms'")
    if not 0 <= index < len(images):
        raise ConfigError(f"truth.index: {index} is outside 0..{len(images) - 1}")
    return images[index]


def _read_job(path: Path) -> dict:
    """The job file as TOML, or a ConfigError naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it: {err.strerror or err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def load_config(path: str | Path, device: str = "cpu") -> dict:
    """Read and validate a run file: the objects to run, or a :class:`ConfigError` naming the file and field."""
    config = _read_job(Path(path))
    try:
        return _build(config, Path(path), device)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def _build(config: dict, path: Path, device: str) -> dict:
    """The objects to run from a job read from TOML, checked against :data:`posterior.jobs.SCHEMA`."""
    import posterior as post

    folder = path.parent
    for section, value in config.items():
        if section not in jobs.SCHEMA:
            raise ConfigError(f"{section}: unknown section; expected {sorted(jobs.SCHEMA)}")
        if section == "operator" and isinstance(value, list):
            continue  # a composition: each table is checked as it is built
        if not isinstance(value, dict):
            raise ConfigError(f"{section}: expected a table [{section}], got {jobs.show(value)}")
        if jobs.SCHEMA[section] is not None:  # the sampler's fields: against its class below
            jobs.check_section(section, value)
    for section in ("prior", "operator", "noise", "sampler"):
        if section not in config:
            raise ConfigError(f"{section}: missing section")
    if "measurement" not in config and "truth" not in config:
        raise ConfigError("measurement: missing section; give [measurement] file, or a [truth] to simulate y from")

    def field(section: str, key: str, default=None):
        value = config.get(section, {}).get(key, default)
        if value is None:
            raise ConfigError(f"{section}.{key}: missing")
        return value

    def count(key: str, default: int) -> int:
        """``run.key``: a positive int, or for ``checkpoint_every`` and ``max_batch`` also 0 (never, all)."""
        value = field("run", key, default)
        if value < 0 or value == 0 and key in ("num_samples", "chains", "batch"):
            raise ConfigError(f"run.{key}: must be a positive int, got {value}")
        return value

    num_samples, chains = count("num_samples", 16), count("chains", 4)
    sampler_config = dict(config["sampler"])
    name, samplers = sampler_config.pop("name", None), _samplers()
    if not isinstance(name, str) or name not in samplers:
        raise ConfigError(f"sampler.name: unknown sampler {jobs.show(name)}; expected one of {sorted(samplers)}")
    cls = samplers[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in sampler_config:
        if key not in fields:
            raise ConfigError(f"sampler.{key}: {name} has no field {key!r}; its fields are {sorted(fields)}")
    try:  # the sampler checks its fields' types and ranges (posterior.samplers.settings)
        sampler = cls(**sampler_config)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"sampler: {err}") from err

    prior, prior_name, data_range, prior_key = jobs.build_prior(config["prior"], folder, device)
    event_shape = tuple(prior.event_shape)
    operator = jobs.build_operator(config["operator"], event_shape, folder, f"prior.{prior_key}")
    try:
        noise = jobs.build_noise(config["noise"], folder)
        noise.check_out_shape(operator.out_shape)  # a per-element sigma fits y
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        where = "noise.sigma" if isinstance(config["noise"].get("sigma"), str) else "noise"  # a file's shape
        raise ConfigError(f"{where}: {err}") from err
    dtype = prior.dtype
    truth = y = many = None
    measurement = config.get("measurement", {})
    if "truth" in config:
        table = config["truth"]
        if sum(k in table for k in ("file", "files", "dataset")) != 1:
            raise ConfigError("truth: give exactly one of truth.file, truth.files and truth.dataset")
        if "files" in table:
            if "files" not in measurement:
                raise ConfigError("truth.files: used with measurement.files (one truth per measurement)")
            if "index" in table:
                raise ConfigError("truth.index: used with truth.dataset, not truth.files")
        elif "file" in table:
            extra = sorted(set(table) & {"index"})
            if extra:
                raise ConfigError("truth.index: used with truth.dataset, not truth.file")
            truth = jobs.data_file(table, "truth", folder, data_range, event_shape, "the prior's event shape")
        else:
            extra = sorted(set(table) & {"key", "range"})
            if extra:
                raise ConfigError(f"truth.{extra[0]}: used with truth.file, not truth.dataset")
            truth = _held_out(table["dataset"], table.get("index", 0), event_shape[-1])
            if tuple(truth.shape) != event_shape:
                raise ConfigError(f"truth: an image of shape {tuple(truth.shape)} for a prior of shape {event_shape}")
        truth = None if truth is None else truth.to(dtype)
    if "range" in measurement and not jobs.in_image_units(config["operator"]):
        raise ConfigError(
            "measurement.range: only for operators whose output is in the image's units (inpainting, "
            "blur, downsample, identity); give this measurement in the units the operator outputs"
        )
    if "measurement" in config and ("files" in measurement or measurement.get("stacked")):
        many = _measurements(config, folder, data_range, operator, noise, dtype, event_shape)
        if count("checkpoint_every", 0):
            raise ConfigError("run.checkpoint_every: not supported with many measurements (run_many keeps none)")
        if many["truths"] is None and truth is not None:  # one truth (e.g. repeated scans of one object)
            many["truths"] = [truth] * len(many["ys"])
    elif "measurement" in config:
        table = config["measurement"]
        if "file" not in table:
            raise ConfigError("measurement.file: missing (or measurement.files, a glob of many)")
        y = jobs.data_file(
            table, "measurement", folder, data_range, operator.out_shape, "the operator's output shape"
        ).to(dtype)
        try:  # y against the noise model's support (e.g. counts for Poisson) and its parameters' shapes
            post.InverseProblem(operator, noise, y)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"measurement.file: {err}") from err
    return {
        "prior": prior,
        "prior_name": prior_name,
        "operator": operator,
        "noise": noise,
        "truth": truth,
        "y": y,
        "many": many,
        "sampler": sampler,
        "num_samples": num_samples,
        "chains": chains,
        "output": _output(field("run", "output", f"runs/{path.stem}")),
        "checkpoint_every": count("checkpoint_every", 0),
        "max_batch": count("max_batch", 0) or None,
        "batch": count("batch", 1),
    }


def _measurements(config: dict, folder: Path, data_range, operator, noise, dtype, event_shape) -> dict:
    """Many measurements (``measurement.files``, or ``file`` with ``stacked = true``): their output
    folders' ``names``, files, ``ys`` (each of the operator's output shape) and ``truths`` (one per
    measurement, or None)."""
    import posterior as post

    table, what = config["measurement"], "the operator's output shape"
    if "files" in table and "file" in table:
        raise ConfigError("measurement.files: give either measurement.file or measurement.files, not both")
    if "files" in table:
        if table.get("stacked"):
            raise ConfigError("measurement.stacked: used with measurement.file, not measurement.files")
        files = jobs.matching(table["files"], "measurement.files", folder)
        ys = [
            jobs.data_file(table, "measurement", folder, data_range, operator.out_shape, what, name, "files")
            for name in files
        ]
        names = [Path(name).stem for name in files]
        if len(set(names)) < len(names):  # e.g. "*/y.npy": the folders' names instead
            names = [str(Path(name).with_suffix("")).replace("/", "_").replace("\\", "_") for name in files]
        if len(set(names)) < len(names):
            raise ConfigError(
                f"measurement.files: {jobs.show(table['files'])} matches files of the same name "
                "(e.g. a.npy and a.png), whose output folders would collide"
            )
    else:
        if "file" not in table:
            raise ConfigError("measurement.file: missing (measurement.stacked needs one stacked file)")
        stack = jobs.data_file(
            table, "measurement", folder, data_range, operator.out_shape, what, stacked=True
        )
        files, ys = [table["file"]] * len(stack), list(stack)
        width, stem = len(str(len(stack) - 1)), Path(table["file"]).stem
        names = [f"{stem}_{k:0{width}d}" for k in range(len(stack))]
    ys = [y.to(dtype) for y in ys]
    for name, y in zip(files, ys, strict=True):
        try:  # y against the noise model's support (e.g. counts for Poisson) and its parameters' shapes
            post.InverseProblem(operator, noise, y)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"measurement.{'files' if 'files' in table else 'file'}: {name}: {err}") from err
    truths = truth_files = None
    if "files" in config.get("truth", {}):
        found = jobs.matching(config["truth"]["files"], "truth.files", folder)
        if len(found) != len(ys):
            raise ConfigError(
                f"truth.files: {jobs.show(config['truth']['files'])} matches {len(found)} files "
                f"for {len(ys)} measurements"
            )
        by_stem = {Path(name).stem: name for name in found}  # a truth has its measurement's file name
        unpaired = [name for name in files if Path(name).stem not in by_stem]
        if len(by_stem) != len(found) or unpaired:
            raise ConfigError(
                f"truth.files: no truth of the same file name for {unpaired[:3] or 'some measurements'}; "
                "give each truth its measurement's file name (in another folder)"
            )
        found = truth_files = [by_stem[Path(name).stem] for name in files]
        truths = [
            jobs.data_file(
                config["truth"], "truth", folder, data_range, event_shape, "the prior's event shape", name, "files"
            ).to(dtype)
            for name in found
        ]
    return {"names": names, "files": files, "ys": ys, "truths": truths, "truth_files": truth_files}


def _same(a: Path, b: Path | None) -> bool:
    return b is not None and a.exists() and b.exists() and a.samefile(b)


def _output(text: str) -> Path:
    if not text.strip():
        raise ConfigError("run.output: empty; name a folder for the run's files")
    return Path(text)


def _claim(
    directory: Path,
    patterns: tuple[str, ...],
    args: argparse.Namespace,
    job: Path | None = None,
    checkpoint: str = "checkpoint.pt",
) -> None:
    """Refuse an output folder that is a file or holds results of an earlier run (files matching
    ``patterns``, the job file itself aside), unless ``--resume`` continues that run there or
    ``--overwrite`` is given (``--resume`` is suggested where ``checkpoint`` is). For a run report
    (``RUN_FILES``, ``MEASUREMENT_FILES``) ``--overwrite`` removes them first, so that no stale figure
    or checkpoint survives; ``train`` rewrites its own files."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: the output folder is a file")
    earlier = sorted(
        p.name for pattern in patterns for p in directory.glob(pattern) if p.is_file() and not _same(p, job)
    )
    if not earlier or getattr(args, "resume", False):
        return
    if not args.overwrite:
        resumable = "resume" in args and (directory / checkpoint).is_file()
        raise ConfigError(
            f"{directory} holds the results of an earlier run ({', '.join(earlier)}); "
            "pass --overwrite to replace them" + (" or --resume to continue it" if resumable else "")
        )
    for name in earlier if patterns in (RUN_FILES, MEASUREMENT_FILES) else ():
        (directory / name).unlink()


def _check_resume(directory: Path) -> None:
    """``--resume``: a checkpoint in ``directory`` that can be read (the sampler checks that it is this run's)."""
    from posterior.samplers.loop import read_checkpoint

    checkpoint = directory / "checkpoint.pt"
    if not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint} (set run.checkpoint_every to write one)")
    read_checkpoint(checkpoint, mmap=True)


def solve(
    config: dict,
    seed: int,
    device: str,
    progress: bool | str,
    directory: Path | None = None,
    resume: bool = False,
) -> Path:
    """Simulate ``y`` from the truth (unless ``config["y"]`` is the measurement), run the sampler, write the run report; returns ``report.md``.

    ``progress`` may be the progress bar's label (e.g. ``"AFDPS (1 of 2)"``). ``config`` may name its
    prior (``prior_name``) for the report. With ``checkpoint_every`` the run's state goes to
    ``checkpoint.pt`` in the output folder every that many steps, which ``resume`` continues from; a
    failed run's last good state goes there in any case."""
    import torch

    import posterior as post
    from posterior import plots

    prior = config["prior"]
    truth, y = config.get("truth"), config.get("y")
    if y is None:  # simulated from the truth
        truth = truth.to(device)
        y = config["noise"].sample(config["operator"](truth[None]), torch.Generator(device).manual_seed(seed))[0]
    y = y.to(device)
    problem = post.InverseProblem(config["operator"], config["noise"], y)
    directory = directory or config["output"]
    checkpoint = directory / "checkpoint.pt"
    result = config["sampler"].sample(
        problem,
        prior,
        config["num_samples"],
        chains=config["chains"],
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,  # without checkpoint_every only a failed run's last good state goes there
        checkpoint_every=config.get("checkpoint_every") or sys.maxsize,
        resume=checkpoint if resume else None,
        max_batch=config.get("max_batch"),
    )
    path = plots.write_report(
        result,
        directory,
        truth=None if truth is None else truth.cpu(),
        problem=problem,
        prior=config.get("prior_name", prior),
        seed=seed,
    )
    print(result.verdict.line)
    return path


def _demo(args: argparse.Namespace) -> None:
    import operators as ops
    import posterior as post

    start = time.perf_counter()
    runs = {
        "afdps": (post.samplers.AFDPS(steps=100), 32, 8),
        "dps": (post.samplers.DPS(steps=100), 16, 4),
    }
    for name in runs:
        _claim(args.out / name, RUN_FILES, args)
    prior = post.priors.pretrained("digits", device=args.device)
    base = {
        "prior": prior,
        "prior_name": "digits",
        "operator": ops.Inpainting.box(prior.event_shape, 0, 0, 8, 16),  # the upper half hidden
        "noise": ops.GaussianNoise(0.05),
        "truth": _held_out("digits", 3, 16),
    }
    for k, (name, (sampler, num_samples, chains)) in enumerate(runs.items(), 1):
        config = dict(base, sampler=sampler, num_samples=num_samples, chains=chains)
        label = f"{type(sampler).__name__} ({k} of {len(runs)})"
        path = solve(config, args.seed, args.device, not args.no_progress and label, args.out / name)
        print(f"{name}: report written to {path}")
    print(f"done in {time.perf_counter() - start:.0f} s; open {args.out}/*/report.md")


def _problem(config: dict, k: int):
    """Measurement ``k`` of a job of many as a problem on the prior's device."""
    import posterior as post

    y = config["many"]["ys"][k].to(config["prior"].device)
    return post.InverseProblem(config["operator"], config["noise"], y)


def _sample(
    config: dict, group: list[int], seed: int, backend: str = "local", workers: int = 1, threads: int = 1
):
    """Measurements ``group`` (consecutive indices) as one task of :func:`posterior.distributed.run_many`
    (one batched call with seed ``seed + group[0]``): their results, or the error that stopped it
    (:func:`_failure`)."""
    from posterior.distributed import run_many

    try:
        return run_many(
            [_problem(config, k) for k in group],
            config["sampler"],
            config["prior"],
            config["num_samples"],
            chains=config["chains"],
            seeds=[seed + group[0]],
            batch=len(group),
            backend=backend,
            workers=workers,
            threads=threads,
            max_batch=config.get("max_batch"),
        )
    except Exception as err:
        return _failure(err)


def _failure(err: Exception) -> tuple[str, int]:
    """A measurement's error as its row's line (its type and message) and exit status; an error that is
    not the user's (a bug) is raised again, with its traceback."""
    cause = getattr(err, "cause", None) or err  # a Ray task's error: the one raised in the task
    report = explain(cause)
    if report is None:
        raise err
    return f"{type(cause).__name__}: {report[0]}", report[1]


def _report(config: dict, group: list[int], outcome, seed: int, directory: Path) -> list[dict]:
    """The summary's rows of measurements ``group`` from their results (a run report each in
    ``directory/<name>/``, then ``row.json``, the row, last) or from the error that stopped them; an
    error while writing one measurement's report is that measurement's row."""
    import json

    from posterior import plots

    many, rows = config["many"], []
    for i, k in enumerate(group):
        row = {  # the error's row, unless a result fills it in
            "index": k,
            "measurement": many["names"][k],
            "file": many["files"][k],
            "truth_file": (many.get("truth_files") or [""] * len(many["ys"]))[k],
            "seed": seed + group[0],
            "verdict": "error",
            "psnr_db": None,
            "ssim": None,
            "coverage": None,
            "wall_time_s": None,
            "nfe": None,
            "vjp": None,
            "error": "",
            "status": 0,  # the exit status its error asks for (not in summary.csv)
            "line": "",
        }
        failure = outcome if isinstance(outcome, tuple) else None
        if failure is None:
            result, folder = outcome[i], directory / many["names"][k]
            truth = None if many["truths"] is None else many["truths"][k].cpu()
            try:
                plots.write_report(
                    result,
                    folder,
                    truth=truth,
                    problem=_problem(config, k),
                    prior=config.get("prior_name", config["prior"]),
                    seed=row["seed"],
                )
                found = {} if truth is None else plots.scores(result, truth)
            except Exception as err:
                failure = _failure(err)
        if failure is not None:
            row.update(error=failure[0], status=failure[1], line=f"error: {failure[0]}")
        else:
            verdict = result.verdict
            row.update(
                verdict="" if verdict is None else ("ok" if verdict.ok else "failed"),
                psnr_db=found.get("psnr"),
                ssim=found.get("ssim"),
                coverage=found.get("coverage"),
                wall_time_s=result.wall_time,
                nfe=result.nfe,
                vjp=result.grad_evals,
                line="" if verdict is None else verdict.line,
            )
            (folder / f"{ROW}.tmp").write_text(json.dumps(row), encoding="utf-8")
            (folder / f"{ROW}.tmp").replace(folder / ROW)  # whole or absent: it marks the run complete
        rows.append(row)
    return rows


def _solve_many(config: dict, groups: list[list[int]], seed: int, directory: Path) -> list[dict]:
    """The groups of measurements of a job of many, one task each, one after the other in this process;
    their rows of the summary."""
    return [
        row
        for group in groups
        for row in _report(config, group, _sample(config, group, seed), seed, directory)
    ]


def _many_worker(
    job: Path, device: str, threads: int, groups: list[list[int]], seed: int, directory: Path
) -> list[dict]:
    """``--workers``: one local process's share of the groups; it reads the job itself."""
    import torch

    torch.set_num_threads(threads)
    return _solve_many(load_config(job, device), groups, seed, directory)


def _ray_many(
    config: dict, groups: list[list[int]], seed: int, directory: Path, workers: int, threads: int
) -> list[dict]:
    """``--backend ray``: each group one Ray task (``workers`` at a time, each waited for by a thread of
    this process, so that one's error stops no other); the reports are written here."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    if not ray.is_initialized():  # here, once, not by run_many in every thread
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda group: _sample(config, group, seed, "ray", workers, threads), groups))
    return [
        row
        for group, outcome in zip(groups, outcomes, strict=True)
        for row in _report(config, group, outcome, seed, directory)
    ]


def _resumed(
    directory: Path, job: Path, names: list[str], groups: list[list[int]], seed: int
) -> dict[int, dict]:
    """``--resume`` of a job of many: the rows (by index) of the measurements whose run in ``directory``
    is complete (``report.md``, ``samples.safetensors`` and ``row.json``), after checking that the
    folder holds a run of this job file with this seed."""
    import json

    copy = directory / JOB
    if not copy.is_file():
        raise ConfigError(f"--resume: no {JOB} in {directory}: no run of this job to continue there")
    if copy.read_bytes() != job.read_bytes():
        raise ConfigError(
            f"--resume: {job} differs from {copy}, the job run in {directory}; pass --overwrite to start again"
        )
    done = {}
    for group in groups:
        for k in group:
            folder = directory / names[k]
            if all((folder / name).is_file() for name in ("report.md", "samples.safetensors", ROW)):
                done[k] = json.loads((folder / ROW).read_text(encoding="utf-8"))
                if done[k]["seed"] != seed + group[0]:
                    raise ConfigError(
                        f"--resume: {names[k]} ran with seed {done[k]['seed']}, this run gives it "
                        f"{seed + group[0]}; pass that run's --seed, or --overwrite to start again"
                    )
    return done


def _write_summary(rows: list[dict], directory: Path, config: dict, seed: int) -> Path:
    """``summary.csv`` (one row per measurement) and ``summary.md`` in ``directory``; returns the latter."""
    import csv

    columns = [c for c in rows[0] if c not in ("line", "status")]
    with open(directory / "summary.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({c: "" if row[c] is None else row[c] for c in columns} for row in rows)

    def number(value, form):
        return "" if value is None else format(value, form)

    sampler, batch = type(config["sampler"]).__name__, config["batch"]
    seeds = (
        f"measurement k has seed {seed} + k"
        if batch == 1
        else f"groups of {batch} consecutive measurements, one batched call each, with seed {seed} + the "
        "index of the group's first measurement"
    )
    lines = [
        f"# {sampler}: {len(rows)} measurements",
        "",
        f"- prior: {config.get('prior_name', '')}; operator: {type(config['operator']).__name__}; "
        f"noise: {config['noise']!r}",
        f"- {config['chains']} chains of {config['num_samples']} draws each; {seeds}; one run report per "
        "measurement, linked below",
        "",
        "| measurement | verdict | PSNR of the mean (dB) | SSIM | coverage | time (s) | NFE |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = row["measurement"]
        lines.append(
            f"| {name if row['error'] else f'[{name}]({name}/report.md)'} | {row['verdict']} | "
            f"{number(row['psnr_db'], '.2f')} | {number(row['ssim'], '.3f')} | "
            f"{number(row['coverage'], '.3f')} | {number(row['wall_time_s'], '.1f')} | {number(row['nfe'], 'd')} |"
        )
    scored = [row["psnr_db"] for row in rows if row["psnr_db"] is not None]
    failed = [row["measurement"] for row in rows if row["verdict"] == "failed"]
    errors = [row for row in rows if row["error"]]
    lines.append("")
    if scored:
        lines.append(f"- mean PSNR over the measurements: {sum(scored) / len(scored):.2f} dB")
    passed = len(rows) - len(failed) - len(errors)
    lines.append(f"- verdict: {passed} of {len(rows)} runs passed their checks")
    if failed:
        lines.append(f"- failed: {', '.join(failed)} (see their reports)")
    lines.extend(f"- error, no report: {row['measurement']}: {row['error']}" for row in errors)
    path = directory / "summary.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_many(args: argparse.Namespace, config: dict) -> None:
    """A job of many measurements: groups of ``run.batch`` consecutive measurements, one task each
    (``--workers`` local processes or Ray tasks), a report per measurement and one summary. A task's
    error is its measurements' row; once everything is written the job ends with the largest status
    its errors ask for (1 for a failed run, 2 for a bad job, :func:`explain`)."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    many = config["many"]
    if args.backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("--backend ray: needs Ray; pip install 'posterior[ray]'")
    directory = args.out or config["output"]
    count, batch = len(many["ys"]), config["batch"]
    groups = [list(range(first, min(first + batch, count))) for first in range(0, count, batch)]
    done = _resumed(directory, args.config, many["names"], groups, args.seed) if args.resume else {}
    _claim(directory, SUMMARY_FILES, args, job=args.config, checkpoint=JOB)
    for name in many["names"]:
        _claim(directory / name, MEASUREMENT_FILES, args, checkpoint=ROW)
    directory.mkdir(parents=True, exist_ok=True)
    if not args.resume and not _same(directory / JOB, args.config):  # a resume's is the same
        shutil.copyfile(args.config, directory / JOB)
    todo = [group for group in groups if not all(k in done for k in group)]  # a group reruns whole
    workers = min(args.workers, len(todo))
    if args.backend == "ray" and todo:
        rows = _ray_many(config, todo, args.seed, directory, workers, args.threads)
    elif workers <= 1:
        rows = _solve_many(config, todo, args.seed, directory)
    else:  # spawned processes, each reading the job: nothing of it needs to be picklable
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            shares = [
                pool.submit(
                    _many_worker,
                    args.config,
                    args.device,
                    args.threads,
                    todo[w::workers],
                    args.seed,
                    directory,
                )
                for w in range(workers)
            ]
            rows = [row for share in shares for row in share.result()]
    ran = {row["index"] for row in rows}
    rows = sorted(rows + [row for k, row in done.items() if k not in ran], key=lambda row: row["index"])
    for row in rows:
        print(f"{row['measurement']}: {row['line']}")
    path = _write_summary(rows, directory, config, args.seed)
    errors = [row["measurement"] for row in rows if row["error"]]
    status = max((row.get("status", 1) for row in rows if row["error"]), default=0)
    print(f"{count - len(errors)} reports and summary.csv in {directory}; summary at {path}")
    if errors:
        print(
            f"posterior run: {len(errors)} of {count} measurements stopped with an error: {', '.join(errors)} "
            f"(their rows in {path})",
            file=sys.stderr,
        )
        raise SystemExit(status)


def _run(args: argparse.Namespace) -> None:
    config = load_config(args.config, args.device)
    if config.get("many"):
        return _run_many(args, config)
    for option, value, default in (("--workers", args.workers, 1), ("--backend", args.backend, "processes")):
        if value != default:
            raise ConfigError(
                f"{option} {value}: for a job of many measurements (measurement.files or stacked); this one has one"
            )
    directory = args.out or config["output"]
    _claim(directory, RUN_FILES, args, job=args.config)
    if args.resume:
        _check_resume(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not args.resume and not _same(directory / JOB, args.config):  # a resume keeps the run's own copy
        shutil.copyfile(args.config, directory / JOB)
    path = solve(config, args.seed, args.device, not args.no_progress, directory, args.resume)
    print(f"report written to {path}")


def _benchmark(args: argparse.Namespace) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{args.name}.py"
    if not script.exists():
        raise ConfigError(f"{script} not found; benchmarks run from a source checkout")
    spec = importlib.util.spec_from_file_location(f"benchmark_{args.name}", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the script look their module up there
    spec.loader.exec_module(module)
    module.main(args.args)


def _train(args: argparse.Namespace) -> None:
    from posterior.priors.training import train

    parts = (".safetensors", ".ckpt", "-noise.safetensors", "-noise.ckpt")  # what train writes
    _claim(args.out, tuple(args.name + part for part in parts), args, checkpoint=f"{args.name}.ckpt")
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


def explain(err: Exception) -> tuple[str, int] | None:
    """The one line and the exit status that report ``err`` (2: a bad job, 1: a failed run), or None
    for an error that is not the user's (a bug, shown with its traceback)."""
    if isinstance(err, FAILED_RUN):
        status = 1
    elif isinstance(err, BAD_JOB):
        status = 2
    else:
        return None
    if isinstance(err, OSError) and err.filename and err.strerror:
        message = f"{err.filename}: {err.strerror}"
    elif isinstance(err, KeyError):  # its message is the bare key
        message = f"missing entry {err}"
    else:
        message = str(err) or type(err).__name__
    return " ".join(message.split()), status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, not the usage
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _count(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text}")
        return value

    parse.__name__ = "int"  # argparse names the type in its message for a non-int
    return parse


def _seed(text: str) -> int:
    from operators.checks import as_seed

    try:
        return as_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**64), got {text}") from None


def _check_device(name: str) -> None:
    import torch

    try:
        torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device {name}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from err
    try:  # a tensor on it: a device that is absent or has no driver fails here, not mid-run
        torch.zeros(1, device=name)
    except Exception as err:
        raise ConfigError(f"--device {name}: not available here ({' '.join(str(err).split())})") from err


def main(argv: list[str] | None = None) -> None:
    common = _Parser(add_help=False)
    common.add_argument(
        "--threads", type=_count(1), default=1, help="torch threads (default 1: fastest on shared CPUs)"
    )
    common.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    common.add_argument(
        "--seed", type=_seed, default=0, help="seed of the simulated measurement and the sampler (default 0)"
    )
    common.add_argument("--no-progress", action="store_true", help="no progress bars")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    written = _Parser(add_help=False)
    written.add_argument(
        "--overwrite", action="store_true", help="replace the results of an earlier run in --out"
    )
    parser = _Parser(
        prog="posterior",
        description="Posterior sampling with diffusion priors. The commands and the run file are "
        "described in docs/cli.md; `posterior COMMAND --help` lists a command's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", parents=[common, written], help="box inpainting of a digit by AFDPS and DPS, offline"
    )
    demo.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: demo/)")
    demo.set_defaults(run=_demo)

    run = commands.add_parser(
        "run",
        parents=[common, written],
        help="run the problem and sampler of a TOML file",
        description="Run the problem and sampler of a TOML run file and write its report. The run file's "
        "sections ([prior], [operator], [noise], [measurement], [truth], [sampler], [run]) are described in "
        "docs/cli.md.",
    )
    run.add_argument(
        "config", type=Path, help="the run file, a TOML file: its sections and keys are described in docs/cli.md"
    )
    run.add_argument("--out", type=Path, default=None, help="output folder (default: the file's run.output)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue from checkpoint.pt in the output folder; for many measurements, run those without a "
        "complete report",
    )
    run.add_argument(
        "--workers",
        type=_count(1),
        default=1,
        help="local processes (or Ray tasks at a time) for a job of many measurements (default 1); the results "
        "do not depend on it",
    )
    run.add_argument(
        "--backend",
        choices=("processes", "ray"),
        default="processes",
        help="where a job of many measurements runs: spawned local processes (default) or Ray "
        "(pip install 'posterior[ray]')",
    )
    run.set_defaults(run=_run)

    bench = commands.add_parser("benchmark", parents=[common], help="run a script of benchmarks/")
    bench.add_argument("name", choices=BENCHMARKS, help="the script benchmarks/NAME.py")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the script (see its --help)")
    bench.set_defaults(run=_benchmark)

    train = commands.add_parser(
        "train", parents=[common, written], help="train a bundled prior and its noise-level classifier"
    )
    train.add_argument("name", help="recipe: digits, phantoms, us-tissue or us-haze")
    train.add_argument("--out", type=Path, default=Path("trained"), help="output folder (default: trained/)")
    train.add_argument(
        "--steps", type=_count(0), default=None, help="denoiser steps (default: the recipe's; 0 skips)"
    )
    train.add_argument(
        "--classifier-steps",
        type=_count(0),
        default=None,
        help="classifier steps (default: the recipe's; 0 skips)",
    )
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.set_defaults(run=_train)

    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(args.threads)
        _check_device(args.device)
        args.run(args)
    except Exception as err:
        report = explain(err)
        if args.debug or report is None:
            raise
        hint = "" if isinstance(err, ConfigError) else " (--debug shows where it was raised)"
        print(f"posterior {args.command}: {report[0]}{hint}", file=sys.stderr)
        raise SystemExit(report[1]) from None


if __name__ == "__main__":
    main()
