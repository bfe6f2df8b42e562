"""`posterior` on bad jobs: one line on stderr, no traceback, exit 2 for a job that cannot run as
written and 1 for a run that failed; --debug shows the traceback; output folders are never overwritten
silently and keep a copy of the job."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from posterior import cli

pytest.importorskip("sklearn")  # held-out digits

_spec = importlib.util.spec_from_file_location("_tiny_job", Path(__file__).with_name("test_cli.py"))
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
VALID = _module.VALID  # the tiny DPS job of test_cli.py: 3 steps, 2 chains of 2 draws
CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"  # a device this machine lacks


def job(tmp_path: Path, *edits: tuple[str, str], name: str = "job.toml") -> str:
    """The tiny job with each ``(old, new)`` edit applied once, written to ``tmp_path / name``."""
    text = VALID
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(tmp_path: Path, *edits: tuple[str, str], options: tuple[str, ...] = ()) -> list[str]:
    return ["run", job(tmp_path, *edits), "--out", str(tmp_path / "out"), "--no-progress", *options]


def binary(tmp_path: Path) -> str:
    (tmp_path / "job.toml").write_bytes(bytes(range(256)))
    return str(tmp_path / "job.toml")


def file_out(tmp_path: Path) -> list[str]:
    (tmp_path / "out").write_text("not a folder")
    return run(tmp_path)


BAD_JOBS = {  # case -> (argv from tmp_path, exit status, what the line names)
    "num_samples = 0": (lambda t: run(t, ("num_samples = 2", "num_samples = 0")), 2, "run.num_samples"),
    "num_samples = true": (lambda t: run(t, ("num_samples = 2", "num_samples = true")), 2, "run.num_samples"),
    "chains = 0": (lambda t: run(t, ("chains = 2", "chains = 0")), 2, "run.chains"),
    "sigma = inf": (lambda t: run(t, ("sigma = 0.05", "sigma = inf")), 2, "noise.sigma"),
    "sigma = nan": (lambda t: run(t, ("sigma = 0.05", "sigma = nan")), 2, "noise.sigma"),
    "steps = 3.0": (
        lambda t: run(t, ("steps = 3", "steps = 3.0")),
        2,
        "sampler: DPS: steps must be an int, got 3.0",
    ),
    'steps = "3"': (
        lambda t: run(t, ("steps = 3", 'steps = "3"')),
        2,
        "sampler: DPS: steps must be an int, got '3'",
    ),
    "step_size = inf": (
        lambda t: run(t, ("steps = 3", "steps = 3\nstep_size = inf")),
        2,
        "sampler: DPS: step_size must be a finite number",
    ),
    'step_size = ["x"]': (
        lambda t: run(t, ('"DPS"', '"JointPosterior"'), ("steps = 3", 'steps = 3\nstep_size = ["x"]')),
        2,
        "sampler: JointPosterior: step_size must be a float or a tuple of floats",
    ),
    "height = 8.5": (lambda t: run(t, ("height = 8", "height = 8.5")), 2, "operator.height"),
    "sampler ParticleSampler": (lambda t: run(t, ('"DPS"', '"ParticleSampler"')), 2, "sampler.name"),
    "sampler Sampler": (lambda t: run(t, ('"DPS"', '"Sampler"')), 2, "sampler.name"),
    "section not a table": (lambda t: run(t, ("[prior]", "prior = 3\n[prio]")), 2, "prior: expected a table"),
    "prior not a weight file": (lambda t: run(t, ('"digits"\n', f'"{t / "job.toml"}"\n')), 2, "prior.name"),
    "missing job file": (lambda t: ["run", str(t / "missing.toml")], 2, "missing.toml"),
    "binary job file": (lambda t: ["run", binary(t)], 2, "job.toml"),
    "job file not TOML": (lambda t: run(t, ("[run]", "[run")), 2, "not valid TOML"),
    "output is a file": (file_out, 2, "out"),
    "--threads 0": (lambda t: run(t, options=("--threads", "0")), 2, "--threads"),
    "--seed 2**70": (lambda t: run(t, options=("--seed", str(2**70))), 2, "--seed"),
    "--seed -1": (lambda t: run(t, options=("--seed", "-1")), 2, "--seed"),
    "--device cuda": (lambda t: run(t, options=("--device", CUDA)), 2, "--device"),
    "--device bogus": (lambda t: run(t, options=("--device", "bogus")), 2, "--device"),
    "--resume without checkpoint": (lambda t: run(t, options=("--resume",)), 2, "no checkpoint"),
    "train bogus": (lambda t: ["train", "bogus", "--out", str(t / "trained")], 2, "bogus"),
    "train --steps -1": (lambda t: ["train", "digits", "--steps", "-1", "--out", str(t)], 2, "--steps"),
    "NaN stop": (  # a step size of 1e30 sends DPS to inf at its second step; the state goes to out/
        lambda t: run(t, ("steps = 3", "steps = 3\nstep_size = 1e30")),
        1,
        "out/checkpoint.pt",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_bad_job_is_one_line(tmp_path, cli_outcome, case):
    argv, status, needle = BAD_JOBS[case]
    code, lines = cli_outcome(argv(tmp_path))
    assert code == status, lines
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], lines
    assert lines[0].count("job.toml: job.toml") == 0  # no doubled prefix


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """An output folder with a checkpoint (step 4 of 6) and its job file."""
    tmp = tmp_path_factory.mktemp("checkpointed")
    edits = [("steps = 3", "steps = 6"), ("chains = 2", "chains = 2\ncheckpoint_every = 4")]
    cli.main(run(tmp, *edits))
    return tmp, edits


RESUMES = {  # a change to a checkpointed job, then --resume -> what the line names (another y: truth)
    "seed": ((), ("--seed", "1"), "seed"),
    "noise.sigma": (("sigma = 0.05", "sigma = 0.1"), (), "noise"),
    "num_samples": (("num_samples = 2", "num_samples = 4"), (), "num_samples"),
    "chains": (("chains = 2", "chains = 1"), (), "chains"),
    "sampler.steps": (("steps = 6", "steps = 7"), (), "steps"),
    "sampler field": (("steps = 6", "steps = 6\nstep_size = 0.5"), (), "step_size"),
    "operator": (("height = 8", "height = 9"), (), "operator"),
    "truth": (("index = 2", "index = 3"), (), "y"),
    "sampler": (('"DPS"', '"RedDiff"'), (), "sampler"),
}


@pytest.mark.parametrize("case", list(RESUMES))
def test_resume_of_another_job_is_one_line(tmp_path, cli_outcome, checkpointed, case):
    source, edits = checkpointed
    shutil.copytree(source / "out", tmp_path / "out")
    edit, options, needle = RESUMES[case]
    code, lines = cli_outcome(run(tmp_path, *edits, *[edit] if edit else [], options=("--resume", *options)))
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "no fingerprint"])
def test_damaged_checkpoint_is_one_line(tmp_path, cli_outcome, checkpointed, damage):
    source, edits = checkpointed
    shutil.copytree(source / "out", tmp_path / "out")
    checkpoint = tmp_path / "out" / "checkpoint.pt"
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    elif damage == "not a checkpoint":
        checkpoint.write_text("hello")
    else:
        saved = torch.load(checkpoint, weights_only=True)
        del saved["fingerprint"]
        torch.save(saved, checkpoint)
    code, lines = cli_outcome(run(tmp_path, *edits, options=("--resume",)))
    assert code == 2 and len(lines) == 1 and "checkpoint" in lines[0] and "Traceback" not in lines[0], lines


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (ValueError("y has shape (5,),\n  expected (3,)"), 2, "y has shape (5,), expected (3,)"),
        (TypeError("steps must be an int"), 2, "steps must be an int"),
        (FileNotFoundError(2, "No such file or directory", "w.pt"), 2, "w.pt: No such file or directory"),
        (KeyError("fingerprint"), 2, "missing entry 'fingerprint'"),
        (FloatingPointError("DPS: NaN at step 3\n"), 1, "DPS: NaN at step 3"),
        (RuntimeError("CUDA out of memory."), 1, "CUDA out of memory."),
    ],
)
def test_any_error_of_the_job_is_one_line(tmp_path, cli_outcome, monkeypatch, error, status, line):
    """Whatever a library call raises (multi-line messages included) reaches the user as one line."""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "solve", fail)
    hint = " (--debug shows where it was raised)"  # not the CLI's own finding: say where to look
    assert cli_outcome(run(tmp_path)) == (status, [f"posterior run: {line}{hint}"])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "solve", lambda *args, **kwargs: None.attribute)
    with pytest.raises(AttributeError):
        cli.main(run(tmp_path))


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(cli.ConfigError, match="run.chains"):  # raised, so Python prints its traceback
        cli.main(run(tmp_path, ("chains = 2", "chains = 0"), options=("--debug",)))


def test_output_folder_is_not_overwritten_silently(tmp_path, cli_outcome):
    """A second run into the same folder is refused (the user's notes in report.md survive); with
    --overwrite it replaces the earlier results, stale files included. The job file is copied there."""
    argv = run(tmp_path)
    out = tmp_path / "out"
    cli.main(argv)
    assert (out / "job.toml").read_text() == VALID
    (out / "report.md").write_text("my notes")
    (out / "convergence.png").write_bytes(b"stale figure")
    code, lines = cli_outcome(argv)
    assert code == 2 and len(lines) == 1 and "--overwrite" in lines[0] and "report.md" in lines[0], lines
    assert (out / "report.md").read_text() == "my notes"
    cli.main([*argv, "--overwrite"])
    assert "DPS" in (out / "report.md").read_text() and not (out / "convergence.png").exists()


def test_job_file_inside_its_output_folder_is_kept(tmp_path):
    """A job that writes to its own folder: the job file is not an earlier result, and is not removed."""
    path = job(tmp_path, ("chains = 2", f'chains = 2\noutput = "{tmp_path}"'))
    cli.main(["run", path, "--no-progress", "--overwrite"])
    assert Path(path).read_text().startswith(VALID.split("[run]")[0]) and (tmp_path / "report.md").exists()


def test_demo_and_train_refuse_earlier_results(tmp_path, cli_outcome):
    (tmp_path / "dps").mkdir()
    (tmp_path / "dps" / "report.md").write_text("earlier")
    code, lines = cli_outcome(["demo", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and len(lines) == 1 and "--overwrite" in lines[0], lines
    (tmp_path / "digits.ckpt").write_bytes(b"earlier")
    code, lines = cli_outcome(["train", "digits", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and len(lines) == 1 and "digits.ckpt" in lines[0] and "--resume" in lines[0], lines


def test_a_refused_resume_keeps_the_runs_job_copy(tmp_path, cli_outcome, checkpointed):
    source, edits = checkpointed
    shutil.copytree(source / "out", tmp_path / "out")
    before = (tmp_path / "out" / "job.toml").read_text()
    code, lines = cli_outcome(run(tmp_path, *edits, ("sigma = 0.05", "sigma = 0.1"), options=("--resume",)))
    assert code == 2 and "noise" in lines[0]
    assert (tmp_path / "out" / "job.toml").read_text() == before


def test_a_job_copy_alone_is_not_a_result(tmp_path, cli_outcome):
    """What a run that failed before its first step leaves (its job.toml) does not block the retry, and
    --resume is suggested only where there is a checkpoint to resume."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "job.toml").write_text("left by a failed run")
    assert cli_outcome(run(tmp_path))[0] == 0
    assert not (tmp_path / "out" / "checkpoint.pt").exists()  # a run without checkpoint_every that succeeded
    code, lines = cli_outcome(run(tmp_path))
    assert code == 2 and "--overwrite" in lines[0] and "--resume" not in lines[0]


def test_zero_means_never_and_all(tmp_path, cli_outcome):
    """run.checkpoint_every = 0 (no checkpoints) and run.max_batch = 0 (no micro-batches), as documented."""
    assert cli_outcome(run(tmp_path, ("chains = 2", "chains = 2\ncheckpoint_every = 0\nmax_batch = 0")))[0] == 0
