"""Job files of ``posterior run`` with the user's own measurement, truth, forward model and prior
(``posterior/jobs.py``): tiny runs end to end, every operator and noise model built from a table, and
each bad job one line naming the field with exit status 2. The docs' field table is the schema's."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import operators as ops
import posterior as post
from posterior import cli, jobs, plots
from posterior.results import PosteriorSamples

PRIOR = '[prior]\nname = "digits"\n'
BOX = '[operator]\ntype = "inpainting"\ntop = 0\nleft = 0\nheight = 8\nwidth = 16\n'
NOISE = "[noise]\nsigma = 0.05\n"
TINY = '[sampler]\nname = "DPS"\nsteps = 3\n\n[run]\nnum_samples = 2\nchains = 2\n'  # 2 chains of 2 draws
DOCS = Path(__file__).parents[2] / "docs" / "cli.md"
RENDER = Path(__file__).parents[2] / "benchmarks" / "render_docs.py"


def write(tmp_path: Path, *sections: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text("\n".join(sections))
    return path


def measurement(tmp_path: Path, array: np.ndarray, name: str = "y.npy", extra: str = "") -> str:
    np.save(tmp_path / name, array)
    return f'[measurement]\nfile = "{name}"\n{extra}'


def run(path: Path, tmp_path: Path) -> list[str]:
    return ["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]


def test_measurement_file_without_truth_writes_a_report(tmp_path):
    y = np.random.default_rng(0).uniform(0, 1, (1, 16, 16))
    y[:, :8] = 0  # the hidden box of the inpainting operator
    path = write(tmp_path, PRIOR, BOX, NOISE, measurement(tmp_path, y), TINY)
    config = cli.load_config(path)
    assert config["truth"] is None and torch.allclose(config["y"].double(), torch.from_numpy(y), atol=1e-6)
    cli.main(run(path, tmp_path))
    text = (tmp_path / "out" / "report.md").read_text()
    assert "DPS" in text and "PSNR" not in text  # no truth, no scores
    assert (tmp_path / "out" / "summary.png").exists()
    result = PosteriorSamples.load(tmp_path / "out" / "samples.safetensors")
    problem = post.InverseProblem(config["operator"], config["noise"], config["y"])
    titles = [ax.get_title() for ax in plots.summary_maps(result, None, problem=problem).axes]
    assert "|y - A(mean)| (data fit)" in titles and "truth" not in titles


def test_ct_job_on_the_phantoms_prior_runs(tmp_path):
    """Sparse-view CT: radon with 8 angles on the phantoms prior, y simulated from a held-out phantom."""
    job = write(
        tmp_path,
        '[prior]\nname = "phantoms"\n',
        '[operator]\ntype = "radon"\ncount = 8\n',
        "[noise]\nsigma = 0.01\n",
        '[truth]\ndataset = "phantoms"\nindex = 1\n',
        TINY,
    )
    config = cli.load_config(job)
    assert isinstance(config["operator"], ops.Radon) and config["operator"].out_shape == (1, 8, 32)
    assert config["operator"].angles.tolist() == [22.5 * k for k in range(8)]
    cli.main(run(job, tmp_path))
    assert "PSNR" in (tmp_path / "out" / "report.md").read_text()


USER_MODULE = """
import operators
import pyro
import pyro.distributions as dist

from posterior.priors import StackedPrior, pretrained


def make_prior():
    return pretrained("digits")


def make_operator():
    return operators.Function(lambda x: 0.5 * x[..., ::2, ::2], (1, 16, 16))


def make_two_sources():  # for haze_link: two sources stacked as channels, (2, 16, 16)
    return StackedPrior([pretrained("digits"), pretrained("digits")])


def small_operator():
    return operators.Function(lambda x: x, (1, 8, 8))


def likelihood(z):
    return pyro.sample("y", dist.Normal(z, 0.05).to_event(3))


not_callable = 3
"""


def user_job(tmp_path: Path, operator: str = "make_operator", noise: str = NOISE) -> Path:
    (tmp_path / "user_model_jobs.py").write_text(USER_MODULE)
    y = np.random.default_rng(1).uniform(0, 0.5, (1, 8, 8))
    return write(
        tmp_path,
        '[prior]\nfactory = "user_model_jobs:make_prior"\n',
        f'[operator]\nfunction = "user_model_jobs:{operator}"\n',
        noise,
        measurement(tmp_path, y),
        TINY,
    )


def test_user_operator_prior_and_pyro_likelihood_run(tmp_path):
    path = user_job(tmp_path, noise='[noise]\nmodel = "user_model_jobs:likelihood"\n')
    config = cli.load_config(path)
    assert isinstance(config["operator"], ops.Function) and isinstance(config["noise"], ops.PyroLikelihood)
    cli.main(run(path, tmp_path))
    assert (tmp_path / "out" / "report.md").exists()


def test_user_operator_with_gaussian_noise_runs(tmp_path):
    cli.main(run(user_job(tmp_path), tmp_path))
    assert (tmp_path / "out" / "samples.safetensors").exists()


def save_safetensors(path: Path, **tensors) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def extra_files(tmp_path: Path) -> None:
    """The mask, kernel, matrix, coil and noise files the operator tables below name."""
    np.save(tmp_path / "mask.npy", np.random.default_rng(0).uniform(size=(1, 16, 16)) > 0.5)
    np.save(tmp_path / "kmask.npy", np.ones((16, 16), dtype=bool))
    np.save(tmp_path / "kernel.npy", np.ones((3, 3)) / 9)
    np.save(tmp_path / "A.npy", np.random.default_rng(0).normal(size=(10, 256)))
    save_safetensors(
        tmp_path / "coils.safetensors", maps=torch.ones(2, 16, 16, dtype=torch.complex64) / 2**0.5
    )
    np.save(tmp_path / "sigma.npy", np.full((1, 16, 16), 0.05))


OPERATORS = {  # the operator table -> (class, out_shape)
    'type = "inpainting"\nfraction = 0.3\nseed = 2': (ops.Inpainting, (1, 16, 16)),
    'type = "inpainting"\nmask = "mask.npy"': (ops.Inpainting, (1, 16, 16)),
    'type = "blur"\nstd = 1.0\nboundary = "reflect"': (ops.Blur, (1, 16, 16)),
    'type = "blur"\nkernel = "motion"\nlength = 5\nangle = 30': (ops.Blur, (1, 16, 16)),
    'type = "blur"\nkernel = "uniform"\nsize = 3': (ops.Blur, (1, 16, 16)),
    'type = "blur"\nkernel = "kernel.npy"': (ops.Blur, (1, 16, 16)),
    'type = "downsample"\nfactor = 4': (ops.Downsample, (1, 4, 4)),
    'type = "radon"\nangles = [0, 45, 90]\ndetectors = 20': (ops.Radon, (1, 3, 20)),
    'type = "radon"\ncount = 4\nangle_range = [0, 90]': (ops.Radon, (1, 4, 16)),
    'type = "mri"\nacceleration = 4.0\ncenter_fraction = 0.1': (ops.MRI, (1, 16, 16, 2)),
    'type = "mri"\nmask = "kmask.npy"\ncoils = "coils.safetensors"': (ops.MRI, (2, 16, 16, 2)),
    'type = "matrix"\nmatrix = "A.npy"': (ops.Matrix, (10,)),
    'type = "phase_retrieval"': (ops.PhaseRetrieval, (1, 32, 32)),
    'type = "phase_retrieval"\noversampling = 1.5\neps = 1e-6': (ops.PhaseRetrieval, (1, 24, 24)),
    'type = "identity"': (ops.Identity, (1, 16, 16)),
}


@pytest.mark.parametrize("table", list(OPERATORS))
def test_every_operator_builds_from_its_table(tmp_path, table):
    extra_files(tmp_path)
    truth = '[truth]\ndataset = "digits"\n'
    config = cli.load_config(write(tmp_path, PRIOR, f"[operator]\n{table}\n", NOISE, truth, TINY))
    cls, out_shape = OPERATORS[table]
    assert isinstance(config["operator"], cls) and tuple(config["operator"].out_shape) == out_shape


def test_phase_retrieval_job_runs(tmp_path):
    """Phase retrieval on the digits prior: y = |FFT| of a held-out digit, DPS, 2 chains of 2 draws."""
    table = '[operator]\ntype = "phase_retrieval"\noversampling = 1.5\neps = 1e-6\n'
    job = write(tmp_path, PRIOR, table, NOISE, '[truth]\ndataset = "digits"\n', TINY)
    config = cli.load_config(job)
    operator, x = config["operator"], torch.rand(1, 1, 16, 16, dtype=torch.float64)
    assert (operator.oversampling, operator.eps) == (1.5, 1e-6)
    expected = torch.fft.fft2(x, s=(24, 24), norm="ortho").abs()
    assert torch.allclose(operator(x), expected, atol=1e-5)
    cli.main(run(job, tmp_path))
    result = PosteriorSamples.load(tmp_path / "out" / "samples.safetensors")
    assert tuple(result.samples.shape[-3:]) == (1, 16, 16)
    assert "PSNR" in (tmp_path / "out" / "report.md").read_text()


def test_haze_link_job_on_two_stacked_sources_runs(tmp_path):
    """haze_link acts on a prior of the two sources stacked as channels (here a factory's StackedPrior):
    (2, 16, 16) -> (1, 16, 16); y is the companded hazy measurement."""
    (tmp_path / "user_model_jobs.py").write_text(USER_MODULE)
    y = np.random.default_rng(2).uniform(-0.5, 0.5, (1, 16, 16))
    job = write(
        tmp_path,
        '[prior]\nfactory = "user_model_jobs:make_two_sources"\n',
        '[operator]\ntype = "haze_link"\ngamma = 0.5\nmu = 100.0\n',
        NOISE,
        measurement(tmp_path, y),
        TINY,
    )
    config = cli.load_config(job)
    operator = config["operator"]
    assert isinstance(operator, ops.HazeLink) and (operator.gamma, operator.mu) == (0.5, 100.0)
    assert operator.in_shape == (2, 16, 16) and operator.out_shape == (1, 16, 16)
    z = torch.rand(1, 2, 16, 16, dtype=torch.float64) - 0.5
    expected = ops.ultrasound.compose(z[:, :1], z[:, 1:], 0.5, 100.0, clip=False)
    assert torch.allclose(operator(z), expected)
    cli.main(run(job, tmp_path))
    assert (tmp_path / "out" / "samples.safetensors").exists()


def test_operators_compose_in_order(tmp_path):
    text = '[[operator]]\ntype = "blur"\nstd = 1.0\n\n[[operator]]\ntype = "downsample"\nfactor = 2\n'
    config = cli.load_config(write(tmp_path, PRIOR, NOISE, '[truth]\ndataset = "digits"\n', TINY, text))
    operator, x = config["operator"], torch.rand(1, 1, 16, 16)
    down, blur = ops.Downsample((1, 16, 16), 2), ops.Blur.gaussian((1, 16, 16), std=1.0)
    assert operator.out_shape == (1, 8, 8) and torch.allclose(operator(x), down(blur(x)))


NOISES = {
    '[noise]\ntype = "poisson"\ngain = 50.0': ops.PoissonNoise,
    '[noise]\ntype = "laplace"\nb = 0.1': ops.LaplaceNoise,
    '[noise]\ntype = "student_t"\ndf = 3.0\nscale = 0.1': ops.StudentTNoise,
    '[noise]\nsigma = "sigma.npy"': ops.GaussianNoise,
}


@pytest.mark.parametrize("table", list(NOISES))
def test_every_noise_model_builds_from_its_table(tmp_path, table):
    extra_files(tmp_path)
    config = cli.load_config(write(tmp_path, PRIOR, BOX, table + "\n", '[truth]\ndataset = "digits"\n', TINY))
    assert isinstance(config["noise"], NOISES[table])


def test_image_measurement_and_truth_are_mapped_onto_the_priors_range(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "y.png")
    save_safetensors(
        tmp_path / "truth.safetensors", x=torch.from_numpy(pixels[None] / 255.0), other=torch.ones(2)
    )
    path = write(
        tmp_path,
        PRIOR,
        '[operator]\ntype = "identity"\n',
        NOISE,
        '[measurement]\nfile = "y.png"\nrange = [0, 255]\n',
        '[truth]\nfile = "truth.safetensors"\nkey = "x"\n',
        TINY,
    )
    config = cli.load_config(path)
    expected = torch.from_numpy(pixels[None] / 255.0).float()
    assert torch.allclose(config["y"], expected) and torch.allclose(config["truth"], expected)


def bad_png(tmp_path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "y.png")
    return write(
        tmp_path, PRIOR, '[operator]\ntype = "identity"\n', NOISE, '[measurement]\nfile = "y.png"\n', TINY
    )


def not_npy(tmp_path: Path) -> Path:
    (tmp_path / "y.npy").write_text("not an array")
    return write(tmp_path, PRIOR, BOX, NOISE, '[measurement]\nfile = "y.npy"\n', TINY)


def y_file(tmp_path: Path, array: np.ndarray, extra: str = "", noise: str = NOISE) -> Path:
    return write(tmp_path, PRIOR, BOX, noise, measurement(tmp_path, array, extra=extra), TINY)


def with_file(tmp_path: Path, name: str, array: np.ndarray, *sections: str) -> Path:
    np.save(tmp_path / name, array)
    return write(tmp_path, *sections)


def edited(job: Path, old: str, new: str) -> Path:
    job.write_text(job.read_text().replace(old, new, 1))
    return job


ZEROS = np.zeros((1, 16, 16))


def haze_job(tmp_path: Path, fields: str) -> Path:
    (tmp_path / "user_model_jobs.py").write_text(USER_MODULE)
    return write(
        tmp_path,
        '[prior]\nfactory = "user_model_jobs:make_two_sources"\n',
        f'[operator]\ntype = "haze_link"\n{fields}',
        NOISE,
        measurement(tmp_path, ZEROS),
        TINY,
    )


CHAIN = '[[operator]]\ntype = "downsample"\nfactor = 2\n\n[[operator]]\ntype = "matrix"\nmatrix = "A.npy"\n'
BAD_JOBS = {  # case -> (job from tmp_path, what the one line names)
    "measurement shape": (
        lambda t: y_file(t, np.zeros((1, 8, 8))),
        "measurement.file: y.npy has shape (1, 8, 8), expected the operator's output shape (1, 16, 16)",
    ),
    "values outside the range": (lambda t: y_file(t, ZEROS + 1.5, "range = [0, 1]\n"), "measurement.range"),
    "range with a forward model of other units": (  # an affine map of y is not one of x there
        lambda t: edited(user_job(t), 'file = "y.npy"', 'file = "y.npy"\nrange = [0, 1]'),
        "measurement.range: only for operators whose output is in the image's units",
    ),
    "prior does not fit the operator": (
        lambda t: user_job(t, "small_operator"),
        "prior.factory: the prior's event shape (1, 16, 16) does not fit the input shape (1, 8, 8)",
    ),
    "operator function not callable": (lambda t: user_job(t, "not_callable"), "operator.function"),
    "operator function missing": (lambda t: user_job(t, "nowhere"), "operator.function"),
    "prior factory module missing": (
        lambda t: edited(user_job(t), "user_model_jobs:make_prior", "no_such_module:f"),
        "prior.factory",
    ),
    "unknown field": (lambda t: edited(y_file(t, ZEROS), "file =", "fil ="), "measurement.fil"),
    "unknown measurement field": (lambda t: y_file(t, ZEROS, "scale = 2\n"), "measurement.scale"),
    "bad file": (not_npy, "measurement.file"),
    "missing file": (
        lambda t: write(t, PRIOR, BOX, NOISE, '[measurement]\nfile = "nope.npy"\n', TINY),
        "measurement.file",
    ),
    "image without its range": (bad_png, "measurement.range"),
    "negative counts for Poisson": (
        lambda t: y_file(t, ZEROS - 1, noise='[noise]\ntype = "poisson"\n'),
        "measurement.file",
    ),
    "no measurement and no truth": (lambda t: write(t, PRIOR, BOX, NOISE, TINY), "measurement"),
    "unknown noise": (lambda t: y_file(t, ZEROS, noise='[noise]\ntype = "cauchy"\n'), "noise.type"),
    "noise field of another model": (
        lambda t: y_file(t, ZEROS, noise="[noise]\nsigma = 0.1\ngain = 2.0\n"),
        "noise.gain",
    ),
    "radon without angles": (
        lambda t: write(t, PRIOR, '[operator]\ntype = "radon"\n', NOISE, measurement(t, ZEROS), TINY),
        "operator: radon needs exactly one of ['angles', 'count']",
    ),
    "blur kernel of the wrong rank": (
        lambda t: with_file(
            t,
            "k.npy",
            np.ones(3),
            PRIOR,
            '[operator]\ntype = "blur"\nkernel = "k.npy"\n',
            NOISE,
            measurement(t, ZEROS),
            TINY,
        ),
        "operator.kernel: k.npy: kernel must be a 2-D tensor",
    ),
    "composition that does not chain": (
        lambda t: with_file(t, "A.npy", np.ones((3, 256)), PRIOR, NOISE, measurement(t, ZEROS), TINY, CHAIN),
        "operator[1].matrix: shape (3, 256), expected (m, 64)",
    ),
    "per-element sigma of another shape": (
        lambda t: with_file(
            t,
            "s.npy",
            np.ones((1, 3, 3)),
            PRIOR,
            BOX,
            '[noise]\nsigma = "s.npy"\n',
            '[truth]\ndataset = "digits"\n',
            TINY,
        ),
        "noise.sigma",
    ),
    "phase retrieval undersampled": (
        lambda t: write(
            t,
            PRIOR,
            '[operator]\ntype = "phase_retrieval"\noversampling = 0.5\n',
            NOISE,
            measurement(t, ZEROS),
            TINY,
        ),
        "operator.oversampling must be a finite number >= 1, got 0.5",
    ),
    "phase retrieval eps not positive": (
        lambda t: write(
            t, PRIOR, '[operator]\ntype = "phase_retrieval"\neps = 0\n', NOISE, measurement(t, ZEROS), TINY
        ),
        "operator.eps must be a finite number > 0, got 0.0",
    ),
    "phase retrieval with a range": (  # |FFT| is not in the image's units
        lambda t: write(
            t,
            PRIOR,
            '[operator]\ntype = "phase_retrieval"\n',
            NOISE,
            measurement(t, ZEROS, extra="range = [0, 1]\n"),
            TINY,
        ),
        "measurement.range: only for operators whose output is in the image's units",
    ),
    "haze link on a one-source prior": (
        lambda t: write(t, PRIOR, '[operator]\ntype = "haze_link"\n', NOISE, measurement(t, ZEROS), TINY),
        "operator: haze_link needs a prior of the two sources (tissue, haze) stacked as channels",
    ),
    "haze link gamma not positive": (
        lambda t: haze_job(t, "gamma = -1\n"),
        "operator.gamma must be a finite number > 0, got -1.0",
    ),
    "haze link mu not positive": (lambda t: haze_job(t, "mu = 0\n"), "operator.mu must be a finite number > 0, got 0.0"),
    "prior name and diffusers": (
        lambda t: edited(y_file(t, ZEROS), 'name = "digits"', 'name = "digits"\ndiffusers = "unet"'),
        "prior: give exactly one of prior.name, prior.factory and prior.diffusers",
    ),
    "diffusers folder missing": (
        lambda t: edited(y_file(t, ZEROS), 'name = "digits"', 'diffusers = "unet"'),
        "prior.diffusers:",
    ),
    "truth of another shape": (
        lambda t: with_file(
            t, "x.npy", np.zeros((16, 16)), PRIOR, BOX, NOISE, '[truth]\nfile = "x.npy"\n', TINY
        ),
        "truth.file: x.npy has shape (16, 16), expected the prior's event shape (1, 16, 16)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_bad_job_is_one_line_naming_the_field(tmp_path, cli_outcome, case):
    make, needle = BAD_JOBS[case]
    code, lines = cli_outcome(run(make(tmp_path), tmp_path))
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert needle in lines[0], lines
    assert not (tmp_path / "out" / "report.md").exists()


def test_field_table_in_the_docs_is_the_schemas():
    """docs/cli.md holds exactly what the schema renders (render_docs --check fails otherwise), and
    every field of the schema is in it."""
    spec = importlib.util.spec_from_file_location("render_docs_for_jobs", RENDER)
    render_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render_docs)
    page = DOCS.read_text()
    block = re.search(r"<!-- table: job-fields -->\n(.*?)<!-- end table -->", page, re.DOTALL)
    assert block and block[1] == render_docs.render("job-fields")
    for section, fields in jobs.SCHEMA.items():
        for key in fields or ("name",):
            assert f"`{section}.{key}`" in block[1], f"{section}.{key}"


def test_schema_does_not_import_torch():
    code = "import sys, posterior.jobs as j; j.field_table(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_user_module_is_imported_from_the_job_folder_only_while_loading(tmp_path):
    (tmp_path / "user_model_jobs_path.py").write_text(USER_MODULE)
    function = jobs.load_callable("user_model_jobs_path:make_operator", "operator.function", tmp_path)
    assert callable(function) and str(tmp_path.resolve()) not in sys.path


def test_palette_images_read_as_their_colours_and_odd_modes_are_refused(tmp_path):
    from PIL import Image

    grey = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")  # stored as palette indices
    read = jobs.load_array("p.png", "measurement.file", tmp_path)
    assert read.shape == (3, 2, 2) and torch.equal(read[0], torch.from_numpy(grey).double())
    Image.fromarray(grey > 100).convert("1").save(tmp_path / "bits.png")
    with pytest.raises(jobs.ConfigError, match="an image of mode '1'"):
        jobs.load_array("bits.png", "measurement.file", tmp_path)


def diffusers_job(tmp_path: Path) -> Path:
    """A job on ``prior.diffusers = "unet"`` (an 8x8 one-channel model in [-1, 1]), the top half hidden."""
    y = np.random.default_rng(3).uniform(-1, 1, (1, 8, 8))
    y[:, :4] = 0
    return write(
        tmp_path,
        '[prior]\ndiffusers = "unet"\nrange = [-1, 1]\n',
        '[operator]\ntype = "inpainting"\ntop = 0\nleft = 0\nheight = 4\nwidth = 8\n',
        NOISE,
        measurement(tmp_path, y),
        TINY,
    )


def test_diffusers_prior_without_the_extra_is_one_line(tmp_path, cli_outcome, monkeypatch):
    find_spec = importlib.util.find_spec  # diffusers made to look absent (the dev extra installs it)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else find_spec(name, *a)
    )
    (tmp_path / "unet").mkdir()
    code, lines = cli_outcome(run(diffusers_job(tmp_path), tmp_path))
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert "prior.diffusers: needs the diffusers package; install posterior[diffusers]" in lines[0], lines


def test_diffusers_unet_folder_is_a_prior(tmp_path, cli_outcome):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    unet.save_pretrained(tmp_path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=50).save_pretrained(tmp_path / "unet")
    job = diffusers_job(tmp_path)
    config = cli.load_config(job)
    assert isinstance(config["prior"], post.priors.NetworkPrior) and config["prior"].event_shape == (1, 8, 8)
    cli.main(run(job, tmp_path))
    assert (tmp_path / "out" / "samples.safetensors").exists()
    # a folder of another model is one line naming the field
    config_file = tmp_path / "unet" / "config.json"
    config_file.write_text(config_file.read_text().replace('"UNet2DModel"', '"UNet2DConditionModel"'))
    code, lines = cli_outcome(run(job, tmp_path))
    assert code == 2 and len(lines) == 1, lines
    assert "prior.diffusers:" in lines[0] and "expected a UNet2DModel" in lines[0], lines
