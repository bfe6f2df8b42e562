"""`posterior run` on many measurements: `measurement.files` (a glob) or a stacked `measurement.file`,
one run report per measurement, one summary, `--workers`, `run.batch` and `--backend ray` through
`run_many`, a failed measurement's error row, `--resume`, and the bad cases."""

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from posterior import cli
from posterior.results import PosteriorSamples

JOB = """
[prior]
name = "digits"

[operator]
type = "identity"

[noise]
sigma = 0.05

[measurement]
{measurement}

[truth]
files = "truths/*.npy"

[sampler]
name = "DPS"
steps = 3

[run]
num_samples = 2
chains = 2
"""


def make_job(
    folder: Path, count: int, measurement: str = 'files = "scans/*.npy"', truths: bool = True
) -> Path:
    """``count`` measurements y = x + noise of random images x (1, 16, 16) in scans/, their truths in truths/."""
    rng = np.random.default_rng(0)
    (folder / "scans").mkdir(parents=True)
    (folder / "truths").mkdir()
    for k in range(count):
        x = rng.uniform(0.0, 1.0, (1, 16, 16))
        np.save(folder / "truths" / f"scan{k}.npy", x)
        np.save(folder / "scans" / f"scan{k}.npy", x + 0.05 * rng.standard_normal(x.shape))
    text = JOB.format(measurement=measurement)
    if not truths:
        text = text.replace('[truth]\nfiles = "truths/*.npy"\n', "")
    path = folder / "job.toml"
    path.write_text(text)
    return path


def samples(folder: Path) -> torch.Tensor:
    return PosteriorSamples.load(folder / "samples.safetensors").samples


def summary(folder: Path) -> list[dict]:
    with open(folder / "summary.csv", newline="") as file:
        return list(csv.DictReader(file))


def overflowing(folder: Path, count: int) -> Path:
    """``count`` measurements, scan1 of which is finite (it loads) but so large (1e30) that the
    likelihood's gradient overflows at the first step: that run stops with a FloatingPointError."""
    path = make_job(folder, count)
    np.save(folder / "scans" / "scan1.npy", np.full((1, 16, 16), 1e30))
    return path


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    """A job of 8 measurement files, run with one worker."""
    folder = tmp_path_factory.mktemp("eight")
    cli.main(["run", str(make_job(folder, 8)), "--out", str(folder / "out"), "--no-progress"])
    return folder / "out"


def test_eight_files_give_eight_reports_and_one_summary(eight):
    names = [f"scan{k}" for k in range(8)]
    assert sorted(p.name for p in eight.iterdir() if p.is_dir()) == names
    for name in names:
        assert {"report.md", "samples.safetensors", "summary.png"} <= {
            p.name for p in (eight / name).iterdir()
        }
    with open(eight / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["measurement"] for row in rows] == names
    assert [int(row["seed"]) for row in rows] == list(range(8))  # the job's seed (0) + the index
    for row in rows:
        assert row["verdict"] in ("ok", "failed")
        assert np.isfinite(float(row["psnr_db"])) and float(row["wall_time_s"]) >= 0 and int(row["nfe"]) == 3
    table = (eight / "summary.md").read_text()
    assert table.count("/report.md)") == 8 and "mean PSNR" in table
    assert (eight / "job.toml").is_file()
    # every measurement its own draws
    assert not torch.equal(samples(eight / "scan0"), samples(eight / "scan1"))


def test_two_workers_give_the_draws_of_one(eight, tmp_path):
    """--workers 2 (spawned processes) on the first 3 files: measurement k has seed 0 + k whatever
    runs it, so its draws equal those of the one-worker run of the 8, bit for bit."""
    path = make_job(tmp_path, 3)
    cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "2"])
    for k in range(3):
        assert torch.equal(samples(tmp_path / "out" / f"scan{k}"), samples(eight / f"scan{k}"))


def test_a_stacked_file_runs_one_problem_per_row(eight, tmp_path):
    """`file` with `stacked = true`: its rows are the measurements, in folders y_0, y_1; the same
    draws as the same measurements given as files."""
    make_job(tmp_path, 2, 'file = "y.npy"\nstacked = true', truths=False)
    np.save(tmp_path / "y.npy", np.stack([np.load(tmp_path / "scans" / f"scan{k}.npy") for k in range(2)]))
    cli.main(["run", str(tmp_path / "job.toml"), "--out", str(tmp_path / "out"), "--no-progress"])
    for k in range(2):
        assert torch.equal(samples(tmp_path / "out" / f"y_{k}"), samples(eight / f"scan{k}"))
    with open(tmp_path / "out" / "summary.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["measurement"] for row in rows] == ["y_0", "y_1"] and rows[0]["psnr_db"] == ""  # no truth


def test_a_failed_measurement_is_an_error_row_and_the_others_run(eight, tmp_path, cli_outcome):
    """scan1's run fails: its row says so, scan0 and scan2 get their reports (the draws of the job
    without the bad scan), and then the command exits with 1 and one line naming scan1."""
    out = tmp_path / "out"
    code, lines = cli_outcome(["run", str(overflowing(tmp_path, 3)), "--out", str(out), "--no-progress"])
    assert code == 1 and len(lines) == 1, lines
    assert "1 of 3 measurements stopped with an error: scan1" in lines[0]
    rows = summary(out)
    assert [row["verdict"] for row in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"].startswith("FloatingPointError: DPS: the data term") and rows[0]["error"] == ""
    assert rows[1]["seed"] == "1" and rows[1]["nfe"] == ""
    assert "- error, no report: scan1: FloatingPointError" in (out / "summary.md").read_text()
    assert not (out / "scan1" / "report.md").exists()
    for k in (0, 2):
        assert torch.equal(samples(out / f"scan{k}"), samples(eight / f"scan{k}"))


def test_a_report_that_cannot_be_written_is_an_error_row(eight, tmp_path, cli_outcome, monkeypatch):
    """Writing scan1's report fails (a full disk, say): scan1 gets an error row, scan0 and scan2 their
    reports, and the command exits after the summary with the status of that error as a single run's
    (2: a file that cannot be written); a bug in the same place keeps its traceback."""
    from posterior import plots

    write_report = plots.write_report

    def full_disk_at_scan1(result, folder, **kwargs):
        if Path(folder).name == "scan1":
            raise OSError(28, "No space left on device", str(folder / "report.md"))
        return write_report(result, folder, **kwargs)

    monkeypatch.setattr(plots, "write_report", full_disk_at_scan1)
    out = tmp_path / "out"
    code, lines = cli_outcome(["run", str(make_job(tmp_path / "job", 3)), "--out", str(out), "--no-progress"])
    assert code == 2 and "stopped with an error: scan1" in lines[0], lines
    rows = summary(out)
    assert [row["verdict"] for row in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"].startswith("OSError:") and "No space left on device" in rows[1]["error"]
    assert (out / "scan2" / "report.md").exists() and not (out / "scan1" / "row.json").exists()

    def bug(result, folder, **kwargs):
        raise AttributeError("a bug")

    monkeypatch.setattr(plots, "write_report", bug)
    with pytest.raises(AttributeError, match="a bug"):
        cli.main(
            ["run", str(make_job(tmp_path / "again", 1)), "--out", str(tmp_path / "out2"), "--no-progress"]
        )


def test_resume_runs_only_the_measurements_without_a_complete_report(eight, tmp_path, cli_outcome):
    """An interrupted job (scan5's folder emptied, its row.json gone) continued by --resume: scan5 runs
    again with its seed (the draws of the first run, bit for bit), the others are read back untouched."""
    out = tmp_path / "out"
    shutil.copytree(eight, out)  # copy2 keeps the files' times
    for file in (out / "scan5").iterdir():
        file.unlink()
    before = {p: p.stat().st_mtime_ns for p in out.glob("scan[!5]/*")}
    cli.main(["run", str(eight.parent / "job.toml"), "--out", str(out), "--no-progress", "--resume"])
    assert torch.equal(samples(out / "scan5"), samples(eight / "scan5"))
    assert {p: p.stat().st_mtime_ns for p in out.glob("scan[!5]/*")} == before
    rows, first = summary(out), summary(eight)
    assert rows[:5] + rows[6:] == first[:5] + first[6:] and rows[5]["measurement"] == "scan5"
    # an errored measurement runs again: scan1 repaired, --resume completes the job
    path = overflowing(tmp_path / "failed", 3)
    assert cli_outcome(["run", str(path), "--out", str(tmp_path / "failed" / "out"), "--no-progress"])[0] == 1
    shutil.copyfile(eight.parent / "scans" / "scan1.npy", tmp_path / "failed" / "scans" / "scan1.npy")
    cli.main(["run", str(path), "--out", str(tmp_path / "failed" / "out"), "--no-progress", "--resume"])
    assert torch.equal(samples(tmp_path / "failed" / "out" / "scan1"), samples(eight / "scan1"))
    assert [row["verdict"] for row in summary(tmp_path / "failed" / "out")] == ["ok", "ok", "ok"]


RESUME_REFUSALS = {  # an edit to the job, --resume's options -> what the line says
    "another job": ("steps = 3", "steps = 4", (), "differs from"),
    "another seed": ("", "", ("--seed", "5"), "scan0 ran with seed 0, this run gives it 5"),
}


@pytest.mark.parametrize("case", RESUME_REFUSALS)
def test_resume_of_another_job_is_one_line(eight, tmp_path, cli_outcome, case):
    old, new, options, expected = RESUME_REFUSALS[case]
    out = tmp_path / "out"
    shutil.copytree(eight, out)
    job = tmp_path / "job.toml"
    job.write_text((eight.parent / "job.toml").read_text().replace(old, new))
    shutil.copytree(eight.parent / "scans", tmp_path / "scans")
    shutil.copytree(eight.parent / "truths", tmp_path / "truths")
    code, lines = cli_outcome(["run", str(job), "--out", str(out), "--no-progress", "--resume", *options])
    assert code == 2 and len(lines) == 1 and "--resume: " in lines[0] and expected in lines[0], lines
    code, lines = cli_outcome(["run", str(job), "--out", str(tmp_path / "none"), "--no-progress", "--resume"])
    assert code == 2 and "--resume: no job.toml in" in lines[0], lines


def test_batches_do_not_depend_on_the_workers(eight, tmp_path):
    """run.batch = 2 on 3 measurements: groups (scan0, scan1) with seed 0 and (scan2) with seed 2, the
    same with --workers 1 and 2; the group of one has the draws of scan2 run alone."""
    path = make_job(tmp_path, 3)
    path.write_text(path.read_text() + "batch = 2\n")
    for workers in ("1", "2"):
        cli.main(["run", str(path), "--out", str(tmp_path / workers), "--no-progress", "--workers", workers])
    assert [row["seed"] for row in summary(tmp_path / "1")] == ["0", "0", "2"]
    for k in range(3):
        assert torch.equal(samples(tmp_path / "1" / f"scan{k}"), samples(tmp_path / "2" / f"scan{k}"))
    assert torch.equal(samples(tmp_path / "1" / "scan2"), samples(eight / "scan2"))
    assert not torch.equal(samples(tmp_path / "1" / "scan1"), samples(eight / "scan1"))  # seed 0, batched


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_gives_the_draws_of_one_worker(eight, tmp_path, cli_outcome):
    """--backend ray with 2 workers (a local Ray instance started by the command): the draws of the
    one-worker run, and a failed measurement is its error row there too."""
    import ray

    out = tmp_path / "out"
    try:
        code, lines = cli_outcome(
            [
                "run",
                str(overflowing(tmp_path, 3)),
                "--out",
                str(out),
                "--no-progress",
                "--backend",
                "ray",
                "--workers",
                "2",
            ]
        )
    finally:
        ray.shutdown()
    assert code == 1 and "stopped with an error: scan1" in lines[-1], lines
    assert summary(out)[1]["error"].startswith("FloatingPointError: DPS: the data term")
    for k in (0, 2):
        assert torch.equal(samples(out / f"scan{k}"), samples(eight / f"scan{k}"))


def test_ray_without_ray_is_one_line(tmp_path, cli_outcome, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a)
    )
    path = make_job(tmp_path, 2)
    code, lines = cli_outcome(["run", str(path), "--out", str(tmp_path / "out"), "--backend", "ray"])
    assert code == 2 and len(lines) == 1, lines
    assert "--backend ray: needs Ray; pip install 'posterior[ray]'" in lines[0]
    assert not (tmp_path / "out").exists()


def bad_shape(folder):
    path = make_job(folder, 2)
    np.save(folder / "scans" / "scan1.npy", np.zeros((1, 8, 8)))
    return path


def stacked_of_wrong_shape(folder):
    path = make_job(folder, 1, 'file = "y.npy"\nstacked = true', truths=False)
    np.save(folder / "y.npy", np.zeros((1, 16, 16)))
    return path


BAD = {
    "a glob matching nothing": (lambda t: make_job(t, 2, 'files = "scans/*.png"'), "measurement.files: "),
    "a file of the wrong shape": (
        bad_shape,
        "measurement.files: scans/scan1.npy has shape (1, 8, 8), expected the operator's output shape (1, 16, 16)",
    ),
    "files and file": (
        lambda t: make_job(t, 2, 'files = "scans/*.npy"\nfile = "scans/scan0.npy"'),
        "measurement.files: give either",
    ),
    "a stacked file of the wrong shape": (
        stacked_of_wrong_shape,
        "measurement.file: y.npy has shape (1, 16, 16)",
    ),
    "stacked files": (
        lambda t: make_job(t, 2, 'files = "scans/*.npy"\nstacked = true'),
        "measurement.stacked",
    ),
    "stacked not a bool": (lambda t: make_job(t, 2, 'file = "y.npy"\nstacked = 1'), "measurement.stacked"),
    "fewer truths": (
        lambda t: (make_job(t, 2), (t / "truths" / "scan1.npy").unlink())[0],
        "truth.files: ",
    ),
    "truths named otherwise": (  # sorted positions would pair scan10 with truth09: refused, not guessed
        lambda t: (make_job(t, 2), (t / "truths" / "scan1.npy").rename(t / "truths" / "truth1.npy"))[0],
        "truth.files: no truth of the same file name for ['scans/scan1.npy']",
    ),
    "truth files for one measurement": (
        lambda t: make_job(t, 2, 'file = "scans/scan0.npy"'),
        "truth.files: used with measurement.files",
    ),
    "batch 0": (
        lambda t: (p := make_job(t, 2), p.write_text(p.read_text() + "batch = 0\n"))[0],
        "run.batch: must be a positive int, got 0",
    ),
    "checkpoints": (
        lambda t: (p := make_job(t, 2), p.write_text(p.read_text() + "checkpoint_every = 2\n"))[0],
        "run.checkpoint_every",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_jobs_give_one_line_naming_the_field(case, tmp_path, capsys):
    build, expected = BAD[case]
    path = build(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [("--workers", "2"), ("--backend", "ray")])
def test_workers_on_a_job_of_one_measurement_is_refused(tmp_path, capsys, option):
    path = make_job(tmp_path, 1, 'file = "scans/scan0.npy"', truths=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["run", str(path), "--out", str(tmp_path / "out"), *option])
    assert exit.value.code == 2 and " ".join(option) in capsys.readouterr().err
