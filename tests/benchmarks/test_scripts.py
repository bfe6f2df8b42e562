"""Smoke tests of the benchmark scripts at tiny settings, so that they do not rot between releases."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gmm_benchmark(tmp_path, capsys):
    out = tmp_path / "gmm.json"
    rows = load("gmm").main(
        [
            "oracle",
            "dps",
            "reddiff-gaussian",
            "afdps",
            "mcgdiff",
            "lml",
            "dlg",
            "--steps",
            "5",
            "--num-samples",
            "40",
            "--particles",
            "8",
            "16",
            "--quick",
            "--out",
            str(out),
            "--markdown",
        ]
    )
    assert len(rows) == 6 * (3 + 2 * 2 + 2)
    assert {r["particles"] for r in rows} == {None, 8, 16}
    assert json.loads(out.read_text())["rows"][0]["sampler"] == "oracle"
    assert all(r["sw_over_floor"] > 0 for r in rows)
    assert "| problem | sampler | 5 steps |" in capsys.readouterr().out


def test_gmm_grid_benchmark(tmp_path, capsys):
    out = tmp_path / "grid.json"
    gmm = load("gmm")
    rows = gmm.main(
        [
            "afdps",
            "dps",
            "--grid",
            "--dims",
            "8",
            "--rows",
            "1",
            "--instances",
            "1",
            "--steps",
            "5",
            "--particles",
            "32",
            "--runs",
            "3",
            "--out",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    assert data["complete"] and data["command"].startswith("python benchmarks/gmm.py afdps dps --grid")
    assert [(r["dim"], r["rows"], r["instance"], r["sampler"]) for r in data["rows"]] == [
        (8, 1, 0, "afdps"),
        (8, 1, 0, "dps"),
    ]
    smc, dps = rows
    assert smc["nfe"] == 5 and smc["particles"] == 32 and smc["sw_over_floor"] > 0 and smc["floor"] > 0
    assert 0 <= smc["mode_tv"] <= 1 and smc["wall_time"] > 0
    assert len(smc["log_evidence_runs"]) == 3 and smc["log_evidence_se"] > 0
    assert smc["log_evidence_z"] == pytest.approx(
        (smc["log_evidence_pooled"] - smc["log_evidence_exact"]) / smc["log_evidence_se"]
    )
    assert "log_evidence_z" not in dps and dps["sw_over_floor"] > 0
    summary = data["summary"]["afdps"]
    assert summary["calls"] == 1 and summary["worst_sw_over_floor"] == summary["median_sw_over_floor"]
    assert "| sampler | calls (per instance) | worst SW/floor | worst call |" in capsys.readouterr().out


def test_gmm_grid_repeats_references_and_pooled_runs(tmp_path):
    """``--repeats``: one call per seed, an instance graded by the mean; the exact references; a particle
    budget split into runs pooled by their evidence estimates."""
    gmm = load("gmm")
    args = ["--grid", "--dims", "8", "--rows", "2", "--instances", "1", "--steps", "5", "--particles", "32"]
    out = tmp_path / "grid.json"
    rows = gmm.main(
        ["exact", "exact-ess50", "afdps-4runs", *args, "--repeats", "2", "--runs", "0", "--out", str(out)]
    )
    assert [(r["sampler"], r["repeat"]) for r in rows] == [
        (name, k) for name in ("exact", "exact-ess50", "afdps-4runs") for k in (0, 1)
    ]
    assert len({r["seed"] for r in rows if r["sampler"] == "exact"}) == 2
    summary = json.loads(out.read_text())["summary"]
    for name in ("exact", "exact-ess50", "afdps-4runs"):
        ratios = [r["sw_over_floor"] for r in rows if r["sampler"] == name]
        assert summary[name]["repeats"] == 2 and summary[name]["worst_call_sw_over_floor"] == max(ratios)
        assert summary[name]["worst_sw_over_floor"] == pytest.approx(sum(ratios) / 2)
    assert all(r["nfe"] == 5 for r in rows if r["sampler"] == "afdps-4runs")  # per particle
    gp = gmm.make_grid_problem(8, 2, 0.5, 0)
    half = gmm.SAMPLERS["exact-ess50"](5).sample(gp.problem, gp.prior, 32, seed=0, progress=False).flat()
    assert torch.unique(half, dim=0).shape[0] == 16 and torch.equal(half[0::2], half[1::2])


def test_gmm_grid_instances():
    gmm = load("gmm")
    p = gmm.make_grid_problem(8, 4, 0.5, 2)
    s = torch.linalg.svdvals(p.problem.operator.to_matrix(dtype=torch.float64))
    assert p.problem.y.dtype == torch.float64 and p.prior.weights.shape == (25,)
    assert bool((s > 0).all() and (s < 1).all() and (s[:-1] >= s[1:]).all())
    assert p.seed != gmm.make_grid_problem(8, 2, 0.5, 2).seed
    assert p.log_evidence == pytest.approx(float(p.prior.log_evidence(p.problem)))


def test_images_benchmark(tmp_path):
    pytest.importorskip("sklearn")
    rows = load("images").main(
        [
            "dps",
            "reddiff",
            "--steps",
            "3",
            "--images",
            "2",
            "--draws",
            "2",
            "--tasks",
            "inpainting",
            "--out",
            str(tmp_path / "images.json"),
        ]
    )
    assert [r["sampler"] for r in rows] == ["dps", "reddiff"]
    assert all(r["psnr_mean"] > 0 for r in rows)


def test_cost_benchmark(tmp_path):
    out = tmp_path / "cost.json"
    result = load("cost").main(
        ["afdps", "dps", "--steps", "3", "--batch", "4", "--repeats", "1", "--batches", "1,2"]
        + ["--sizes", "16,32", "--size-batch", "2", "--scaling-steps", "2", "--out", str(out)]
    )
    assert [r["sampler"] for r in result["rows"]] == ["afdps", "dps"]
    assert all(r["overhead"] > 0 and r["nfe"] >= 3 and r["peak_mb"] >= 0 for r in result["rows"])
    assert [r["vjp"] > 0 for r in result["rows"]] == [False, True]
    assert [(r["sampler"], r["batch"]) for r in result["batches"]][-1] == ("dps", 2)
    assert [r["size"] for r in result["sizes"]] == [16, 16, 32, 32]
    assert json.loads(out.read_text())["rows"][1]["sampler"] == "dps"


def test_gpu_check_runs_on_cpu(tmp_path):
    out = load("gpu_check").main(
        ["--device", "cpu", "--particles", "64", "--steps", "4", "--batch", "2", "--big-batch", "4"]
        + ["--max-batch", "2", "--repeats", "1", "--out", str(tmp_path / "g.json")]
    )
    assert all(row["ok"] for row in out["matrix"]), [r for r in out["matrix"] if not r["ok"]]
    assert len(out["matrix"]) == 18 and len(out["cost"]) == 10
    assert 0 < out["exactness"]["error_over_tolerance"] < 1  # AFDPS within 4 standard errors + 0.02


def test_mcmc_digits_benchmark(tmp_path):
    pytest.importorskip("sklearn")
    row = load("mcmc_digits").main(
        ["--chains", "2", "--draws", "4", "--burn-in", "2", "--thin", "1", "--out", str(tmp_path / "m.json")]
    )
    assert row["max_rhat"] > 0 and row["min_ess_bulk"] > 0


def test_calibration_benchmark(tmp_path):
    script = load("calibration")
    rows = script.main(
        ["exact", "dlg", "reddiff-gaussian", "--problem", "overlapping", "--problems", "20", "--draws", "9"]
        + ["--steps", "5", "--out", str(tmp_path / "c.json")]
    )
    assert [r["sampler"] for r in rows] == ["exact", "dlg", "reddiff-gaussian"]
    assert 0 <= rows[0]["coverage"][0.5] <= 1 and rows[0]["hpd_method"] == "exact"
    rows = script.main(
        [
            "dps",
            "--problem",
            "digits",
            "--problems",
            "20",
            "--draws",
            "3",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "d.json"),
        ]
    )
    assert rows[0]["hpd_method"] == "kde" and 0 <= rows[0]["hpd_coverage"][0.9] <= 1
    rates = script.main(["--false-alarm", "2", "--problems", "20", "--out", str(tmp_path / "c.json")])
    assert set(rates) >= {"sbc", "hpd", "tarp", "any"}


def test_dehazing_benchmark(tmp_path):
    """Small frames and two steps: every method and metric runs and the figure is written."""
    rows = load("dehazing").main(
        ["--frames", "1", "--lines", "128", "--samples", "96", "--draws", "1", "--steps", "2"]
        + ["--figure", str(tmp_path / "d.png"), "--out", str(tmp_path / "d.json")]
    )
    assert [r["method"] for r in rows] == ["clean", "hazy", "svd", "dps", "joint"]
    assert (
        rows[0]["gcnr_ventricle"] > rows[1]["gcnr_ventricle"] and (tmp_path / "d.png").stat().st_size > 1000
    )


def test_joint_toy_benchmark(tmp_path):
    rows = load("joint_toy").main(["--draws", "64", "--out", str(tmp_path / "j.json")])
    assert len(rows) == 7 and all(r["joint"] > 0 for r in rows)


def test_parameters_benchmark(tmp_path):
    out = tmp_path / "parameters.json"
    argv = ["--problems", "2", "--afdps-problems", "2", "--gain-problems", "2", "--steps", "3"]
    argv += ["--digits-steps", "2", "--digits-particles", "4", "--digits-nodes", "8", "--out", str(out)]
    load("parameters").main(argv)
    data = json.loads(out.read_text())
    assert len(data["noise_level"]) == 5 and len(data["gain"]) == 2 and len(data["digits"]) == 3
    assert data["command"].startswith("python benchmarks/parameters.py --problems 2")
    assert "grid_width" in data["digits"][0] and "log_evidence_at_truth_4" in data["digits"][-1]


def test_acquisition_benchmark(tmp_path):
    out = tmp_path / "acquisition.json"
    load("acquisition").main(["--images", "1", "--steps", "2", "--particles", "2", "--out", str(out)])
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 4 and len(data["summary"]) == 8
    assert all(len(r["order"]) == 8 and r["order"][0] == 0 for r in data["rows"])


def test_acquisition_benchmark_on_digits_draws_its_figure(tmp_path):
    out, figure = tmp_path / "digits.json", tmp_path / "masks.png"
    argv = ["--task", "digits", "--images", "2", "--steps", "2", "--particles", "2"]
    load("acquisition").main([*argv, "--figure", str(figure), "--out", str(out)])
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 6 and {e["acceleration"] for e in data["summary"]} == {"8x", "4x"}
    assert all(len(r["order"]) == 64 and len(r["updates"]) == 16 for r in data["rows"])
    assert figure.stat().st_size > 10_000


def test_phantoms_benchmark(tmp_path):
    out = tmp_path / "phantoms.json"
    argv = ["dds-50", "dds-50-ddim", "--tasks", "ct-12", "mri-8x", "--images", "2", "--draws", "2"]
    load("phantoms").main([*argv, "--out", str(out)])
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 2 * 2 * 3 and len(data["summary"]) == 2 * 3
    assert all(r["vjp"] == 0 and r["nfe"] == 50 for r in data["rows"] if r["sampler"] != "classical")


@pytest.mark.parametrize("truth", ["phantom_volumes", "shepp_logan_volume"])
def test_volumes_benchmark_draws_its_figure(tmp_path, truth):
    out, figure = tmp_path / "volumes.json", tmp_path / "sagittal.png"
    argv = ["--volumes", "2", "--depth", "4", "--steps", "3", "--draws", "2", "--figure", str(figure)]
    load("volumes").main(
        [*argv, "--out", str(out), *(["--shepp-logan"] if truth == "shepp_logan_volume" else [])]
    )
    data = json.loads(out.read_text())
    assert data["truth"] == truth
    assert len(data["rows"]) == 2 * 4 and [e["method"] for e in data["summary"]] == list(
        load("volumes").METHODS
    )
    assert figure.stat().st_size > 5_000


def test_priors_benchmark_scores_both_yardsticks(tmp_path):
    """Tiny settings on the digits: the two yardsticks per sigma with paired differences, rendered."""
    out = tmp_path / "priors.json"
    load("priors").main(
        ["digits", "--num-samples", "4", "--steps", "2", "--docs", str(tmp_path), "--out", str(out)]
    )
    data = json.loads(out.read_text())
    table = data["rows"][0]["denoising"]
    assert len(table) == 7 and data["rows"][0]["reference_images"] == 1500
    for entry in table.values():
        assert {
            "network",
            "gaussian",
            "empirical",
            "network_minus_gaussian",
            "network_minus_empirical",
        } <= set(entry)
    lines = load("render_docs").denoising(data)
    assert len(lines) == 2 + 7 and "digits" in lines[2]
