"""Files never surprise (issue 20): modes from the umask, no orphan or piled-up files, no silent
replacement of someone else's file, and one line naming the file for whatever cannot be loaded."""

import json
import os
import stat
import tempfile
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import operators as ops
import posterior as post
from posterior.priors import GaussianMixture, pretrained
from posterior.priors.training import FORMAT_PRIOR
from posterior.utils import atomic_write, write_json


def mixture(explode_below: float | None = None):
    """A 2-d mixture prior observed through a 1x2 matrix; its denoiser returns NaN below ``explode_below``."""
    prior = GaussianMixture.grid(2, seed=0)
    if explode_below is not None:
        denoise = prior.denoise
        prior.denoise = lambda x, sigma: (
            denoise(x, sigma) * (float("nan") if float(torch.as_tensor(sigma).max()) < explode_below else 1.0)
        )
    g = torch.Generator().manual_seed(1000)
    A = ops.Matrix(torch.randn(1, 2, generator=g, dtype=torch.float64) / 2**0.5)
    noise = ops.GaussianNoise(0.5)
    return prior, post.InverseProblem(A, noise, noise.sample(A(prior.sample(2, seed=1)), g))


def run(**kwargs) -> post.PosteriorSamples:
    prior, problem = mixture(kwargs.pop("explode_below", None))
    return post.samplers.DPS(steps=6).sample(problem, prior, 4, chains=2, seed=3, progress=False, **kwargs)


def one_line_naming(err, path) -> None:
    assert str(path) in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


# -- modes and temporary files ---------------------------------------------------------------------
WRITERS = {
    "result": lambda path: run().save(path),
    "checkpoint": lambda path: run(checkpoint=path, checkpoint_every=2),
    "json": lambda path: write_json(path, {"a": 1}),
}


@pytest.mark.parametrize("mask, mode", [(0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_files_are_created_with_the_process_umask(writer, mask, mode, umask, tmp_path):
    umask(mask)
    path = tmp_path / "out" / "file"
    WRITERS[writer](path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert [p.name for p in path.parent.iterdir()] == ["file"]  # no temporary file left


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_intact(error, tmp_path):
    path = tmp_path / "result.safetensors"
    path.write_text("old")
    names = []

    def write(tmp):
        names.append(os.path.basename(tmp))
        open(tmp, "w").write("half")
        raise error("disk full")

    with pytest.raises(error):
        atomic_write(path, write)
    assert names[0].startswith(".result.safetensors.") and names[0].endswith(".partial")  # recognisable
    assert [p.name for p in tmp_path.iterdir()] == ["result.safetensors"] and path.read_text() == "old"


# -- no silent replacement -------------------------------------------------------------------------
FOREIGN = {
    "text": lambda path: path.write_text("my notes"),
    "safetensors": lambda path: save_file({"a": torch.zeros(2)}, path),
    "torch": lambda path: torch.save({"a": 1}, path),
}


@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_save_refuses_a_foreign_file_unless_overwrite(foreign, tmp_path):
    path = tmp_path / "file"
    FOREIGN[foreign](path)
    before = path.read_bytes()
    result = run()
    with pytest.raises(FileExistsError, match="overwrite=True") as err:
        result.save(path)
    one_line_naming(err, path)
    assert path.read_bytes() == before
    result.save(path, overwrite=True)
    torch.testing.assert_close(post.PosteriorSamples.load(path).samples, result.samples)
    result.save(path)  # a result of this library is replaced without asking


@pytest.mark.parametrize("foreign", sorted(FOREIGN))
def test_checkpoint_refuses_a_file_that_is_not_a_checkpoint(foreign, tmp_path):
    path = tmp_path / "run.pt"
    FOREIGN[foreign](path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="not a posterior checkpoint") as err:
        run(checkpoint=path, checkpoint_every=2)
    one_line_naming(err, path)
    assert path.read_bytes() == before
    (tmp_path / "other.pt").unlink(missing_ok=True)
    run(checkpoint=tmp_path / "other.pt", checkpoint_every=2)
    run(checkpoint=tmp_path / "other.pt", checkpoint_every=3)  # a checkpoint is replaced


# -- the NaN guard's state file --------------------------------------------------------------------
def test_nan_stops_without_checkpoint_leave_one_named_file(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    messages = []
    for _ in range(3):
        with pytest.raises(FloatingPointError, match=r"saved in (\S+)$") as err:
            run(explode_below=1.0)
        messages.append(str(err.value))
    path = tmp_path / f"posterior-DPS-{os.getpid()}-last-good.pt"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert all(m.endswith(f"saved in {path}") for m in messages)
    assert torch.load(path, weights_only=True)["step"] > 0


# -- loading what is not a checkpoint or a result --------------------------------------------------
def tampered_checkpoint(change):
    def write(path):
        run(checkpoint=path, checkpoint_every=2)
        saved = torch.load(path, weights_only=True)
        change(saved)
        torch.save(saved, path)

    return write


def truncated_checkpoint(keep):
    def write(path):
        run(checkpoint=path, checkpoint_every=2)
        path.write_bytes(path.read_bytes()[: keep(path.stat().st_size)])

    return write


CHECKPOINTS = {
    "truncated by half": truncated_checkpoint(lambda size: size // 2),
    "truncated by 1 byte": truncated_checkpoint(lambda size: size - 1),  # was OSError [Errno 22]
    "truncated by 200 bytes": truncated_checkpoint(lambda size: size - 200),
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("hello"),
    "safetensors": FOREIGN["safetensors"],
    "a tensor": lambda path: torch.save(torch.zeros(3), path),
    "no fingerprint": tampered_checkpoint(lambda saved: saved.pop("fingerprint")),
    "step as text": tampered_checkpoint(lambda saved: saved.update(step="6")),
    "nfe as bool": tampered_checkpoint(lambda saved: saved.update(nfe=True)),
    "float rng": tampered_checkpoint(lambda saved: saved.update(rng=torch.zeros(3))),
    "another format": tampered_checkpoint(lambda saved: saved.update(format=1)),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_resume_from_a_damaged_checkpoint_is_one_line_naming_it(case, tmp_path):
    path = tmp_path / "run.pt"
    CHECKPOINTS[case](path)
    with pytest.raises(ValueError, match="not a (usable )?posterior checkpoint") as err:
        run(resume=path)
    one_line_naming(err, path)


def tampered_result(tensors=None, **info):
    """A result file whose tensors and JSON fields are replaced by ``tensors`` and ``info``."""

    def write(path):
        result = run()
        result.log_weights = torch.zeros(result.chains, result.draws)
        result.save(path)
        with safe_open(str(path), framework="pt") as f:
            meta, saved = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        saved.update(tensors or {})
        meta["info"] = json.dumps({**json.loads(meta["info"]), **info})
        save_file(saved, path, metadata=meta)

    return write


def nan_samples():
    x = run().samples.clone()
    x[0, 0, 0] = float("nan")
    return x


RESULTS = {
    "truncated": lambda path: (run().save(path), path.write_bytes(path.read_bytes()[:-10])),
    "text": lambda path: path.write_text("hello"),
    "foreign safetensors": FOREIGN["safetensors"],
    "nan samples": tampered_result({"samples": nan_samples()}),
    "integer samples": tampered_result({"samples": torch.zeros(2, 4, 2, dtype=torch.int64)}),
    "nan log-weights": tampered_result({"log_weights": torch.full((2, 4), float("nan"))}),
    "log-weights shape": tampered_result({"log_weights": torch.zeros(2, 3)}),
    "stats shape": tampered_result({"stats.log_likelihood": torch.zeros(4, 2)}),
    "unknown tensor": tampered_result({"extra": torch.zeros(1)}),
    "nfe many": tampered_result(nfe="many"),
    "nfe as bool": tampered_result(nfe=True),
    "kind bogus": tampered_result(kind="bogus"),
    "negative wall time": tampered_result(wall_time=-1.0),
    "config a list": tampered_result(config=[1]),
    "unknown field": tampered_result(colour="red"),
    "verdict a string": tampered_result(verdict="fine"),
}


@pytest.mark.parametrize("case", sorted(RESULTS))
def test_loading_a_damaged_result_is_one_line_naming_it(case, tmp_path):
    path = tmp_path / "result.safetensors"
    RESULTS[case](path)
    with pytest.raises(ValueError, match="not a (valid saved PosteriorSamples|file written by)") as err:
        post.PosteriorSamples.load(path)
    one_line_naming(err, path)


def test_a_saved_result_with_a_verdict_loads(tmp_path):
    result = run()
    assert result.verdict is not None
    loaded = post.PosteriorSamples.load(result.save(tmp_path / "r.safetensors"))
    assert loaded.verdict == result.verdict and loaded.kind == result.kind == "approximate"


# -- weight files ----------------------------------------------------------------------------------
def weight_file(path, widths, file_widths=(8,), meta_changes=None):
    """A real tiny network's weights (``file_widths``) under metadata that claims ``widths``."""
    net = post.priors.unet.GaussianResidualUNet((1, 8, 8), list(file_widths), 1, 16)
    meta = {
        "format": FORMAT_PRIOR,
        "unet": {**net.config, "widths": list(widths)},
        "sigma_min": 0.01,
        "sigma_max": 10.0,
        "sigma_data": 0.5,
        "event_shape": [1, 8, 8],
        **(meta_changes or {}),
    }
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})


WEIGHTS = {
    "metadata claims 16.5 billion numbers": (
        lambda p: weight_file(p, [8192] * 3),
        "metadata describes a network of 16,512,381,609 numbers",
    ),
    "metadata claims other widths": (lambda p: weight_file(p, [16]), "whose '.*' has shape"),
    "metadata claims no network": (lambda p: weight_file(p, [8], meta_changes={"unet": 3}), "no network"),
    "text": (lambda p: p.write_text("hello"), "not a weight file"),
    "not JSON": (lambda p: save_file({"a": torch.zeros(1)}, p, metadata={"x": "{"}), f"not a {FORMAT_PRIOR}"),
    "a result": (lambda p: run().save(p), f"not a {FORMAT_PRIOR} file"),
}


@pytest.mark.parametrize("case", sorted(WEIGHTS))
def test_pretrained_refuses_a_file_before_allocating_its_network(case, tmp_path, monkeypatch):
    write, message = WEIGHTS[case]
    path = tmp_path / "prior.safetensors"
    write(path)
    initialise = torch.nn.init.kaiming_uniform_

    def only_on_meta(tensor, *args, **kwargs):  # a real parameter would be allocated memory
        assert tensor.is_meta, "a parameter was allocated before the file was checked"
        return initialise(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", only_on_meta)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message) as err:
        pretrained(path)
    assert time.perf_counter() - start < 5
    one_line_naming(err, path)


def test_pretrained_loads_a_truthful_file(tmp_path):
    path = tmp_path / "prior.safetensors"
    weight_file(path, [8])
    prior = pretrained(path)
    assert not any(p.requires_grad or p.is_meta for p in prior.net.parameters())
