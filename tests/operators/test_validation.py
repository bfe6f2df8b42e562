"""Issue 20, part 2: constructors of operators, noise models, ``InverseProblem``, analytic priors,
schedules and composite priors refuse bad arguments at the door, with a message that names the
argument, its value and what was expected (``TypeError`` for a wrong type, ``ValueError`` for a
wrong value)."""

import math

import numpy as np
import pytest
import torch

import operators as ops
from operators.base import Composition
from posterior.priors.analytic import Gaussian, GaussianMixture
from posterior.priors.composite import PatchedPrior, StackedPrior, SubspacePrior
from posterior.priors.schedules import EDMSchedule, VESchedule, VPSchedule
from posterior.problem import InverseProblem

F64 = torch.float64
INF, NAN = math.inf, math.nan


def matrix(m: int = 3, d: int = 4) -> ops.Matrix:
    return ops.Matrix(torch.ones(m, d, dtype=F64))


def problem(operator, noise=None, y=None) -> InverseProblem:
    y = torch.zeros(operator.out_shape, dtype=F64) if y is None else y
    return InverseProblem(operator, noise or ops.GaussianNoise(0.1), y)


def function(fn, out_shape=(3,)) -> ops.Function:
    return ops.Function(fn, (3,), out_shape)


def mixture(**kwargs) -> GaussianMixture:
    return GaussianMixture(torch.zeros(2, 3, dtype=F64), torch.ones(2, dtype=F64), 1.0, **kwargs)


def patch_prior() -> Gaussian:
    return Gaussian(torch.zeros(1, 4, 4, dtype=F64), 1.0)


# (id, constructor call, expected exception, regex the message must match)
CASES = [
    # -- shapes: tuples of positive ints, bool is not an int --------------------------------------
    (
        "identity-float-shape",
        lambda: ops.Identity((2.7,)),
        TypeError,
        r"shape must be .*positive ints, got \(2\.7,\)",
    ),
    ("identity-bool-shape", lambda: ops.Identity((True, 2)), TypeError, r"shape .* got \(True, 2\)"),
    ("identity-bool", lambda: ops.Identity(True), TypeError, "shape"),
    ("identity-zero", lambda: ops.Identity((0, 2)), ValueError, r"shape .* got \(0, 2\)"),
    ("identity-string", lambda: ops.Identity("3"), TypeError, "shape"),
    ("function-float-shape", lambda: ops.Function(torch.sin, (2.5,)), TypeError, "in_shape"),
    ("matrix-float-shape", lambda: ops.Matrix(torch.eye(2), in_shape=(2.0,)), TypeError, "in_shape"),
    ("blur-float-shape", lambda: ops.Blur.uniform((1, 8.0, 8), 3), TypeError, "shape"),
    ("hazelink-negative-shape", lambda: ops.HazeLink((1, -4, 4)), ValueError, "shape"),
    ("phase-float-shape", lambda: ops.PhaseRetrieval((1, 4, 4.5)), TypeError, "shape"),
    ("cartesian-float-shape", lambda: ops.MRI.cartesian_mask((4.5, 4), 2.0), TypeError, "shape"),
    # -- other operator arguments -----------------------------------------------------------------
    ("matrix-list", lambda: ops.Matrix([[1.0]]), TypeError, "matrix must be a torch.Tensor"),
    ("matrix-complex", lambda: ops.Matrix(torch.eye(2, dtype=torch.complex64)), TypeError, "complex64"),
    ("matrix-empty", lambda: ops.Matrix(torch.zeros(0, 3)), ValueError, r"non-empty .* \(0, 3\)"),
    ("scaled-inf", lambda: ops.Identity(2) * INF, ValueError, "scale must be a finite number, got inf"),
    ("scaled-nan", lambda: ops.Scaled(ops.Identity(2), NAN), ValueError, "scale"),
    ("composition-not-operator", lambda: Composition(ops.Identity(2), "A"), TypeError, "inner must be"),
    ("sum-not-operator", lambda: ops.Sum(ops.Identity(2), 3.0), TypeError, "b must be"),
    ("blur-zero-kernel", lambda: ops.Blur(torch.zeros(3, 3), (1, 8, 8)), ValueError, "kernel is all zeros"),
    ("blur-empty-kernel", lambda: ops.Blur(torch.zeros(0, 3), (1, 8, 8)), ValueError, "kernel is all zeros"),
    ("blur-inf-kernel", lambda: ops.Blur(torch.full((3, 3), INF), (1, 8, 8)), ValueError, "NaN or inf"),
    ("blur-int-kernel", lambda: ops.Blur(torch.ones(3, 3, dtype=torch.long), (1, 8, 8)), TypeError, "int64"),
    ("blur-list-kernel", lambda: ops.Blur([[1.0]], (1, 8, 8)), TypeError, "kernel must be"),
    ("blur-gaussian-inf-std", lambda: ops.Blur.gaussian((1, 8, 8), INF), ValueError, "std .* got inf"),
    ("blur-uniform-float-size", lambda: ops.Blur.uniform((1, 8, 8), 2.5), TypeError, "size must be an int"),
    ("blur-motion-inf-length", lambda: ops.Blur.motion((1, 8, 8), INF, 0.0), ValueError, "length"),
    ("blur-motion-nan-angle", lambda: ops.Blur.motion((1, 8, 8), 3.0, NAN), ValueError, "angle_degrees"),
    ("downsample-bool-factor", lambda: ops.Downsample((1, 4, 4), True), TypeError, "factor must be an int"),
    ("downsample-float-factor", lambda: ops.Downsample((1, 4, 4), 2.0), TypeError, "factor must be an int"),
    ("upsample-float-width", lambda: ops.BandlimitedUpsample((1, 2, 4), 8.0), TypeError, "width"),
    ("upsample-small-width", lambda: ops.BandlimitedUpsample((1, 2, 4), 3), ValueError, "width .* >= 4"),
    ("inpaint-nan-fraction", lambda: ops.Inpainting.random((1, 4, 4), NAN), ValueError, "fraction_observed"),
    ("inpaint-float-seed", lambda: ops.Inpainting.random((1, 4, 4), 0.5, seed=1.5), TypeError, "seed"),
    ("inpaint-float-box", lambda: ops.Inpainting.box((1, 4, 4), 0.5, 0, 1, 1), TypeError, "top"),
    ("cartesian-inf-acceleration", lambda: ops.MRI.cartesian_mask((4, 4), INF), ValueError, "acceleration"),
    ("cartesian-float-seed", lambda: ops.MRI.cartesian_mask((4, 4), 2.0, seed=0.5), TypeError, "seed"),
    (
        "mri-int-coils",
        lambda: ops.MRI(torch.ones(4, 4), torch.ones(2, 4, 4, dtype=torch.long)),
        TypeError,
        "coils",
    ),
    ("mri-list-coils", lambda: ops.MRI(torch.ones(4, 4), [[1.0]]), TypeError, "coils"),
    ("birdcage-float-coils", lambda: ops.birdcage_maps(2.5, 4, 4), TypeError, "coils must be an int"),
    ("birdcage-real-dtype", lambda: ops.birdcage_maps(2, 4, 4, dtype=torch.float32), TypeError, "complex"),
    ("radon-float-size", lambda: ops.Radon([0.0], 8.0), TypeError, "size must be an int"),
    ("radon-bool-detectors", lambda: ops.Radon([0.0], 8, n_detectors=True), TypeError, "n_detectors"),
    ("phase-inf-eps", lambda: ops.PhaseRetrieval((1, 4, 4), eps=INF), ValueError, "eps"),
    ("phase-bool-oversampling", lambda: ops.PhaseRetrieval((1, 4, 4), True), TypeError, "oversampling"),
    ("hazelink-inf-gamma", lambda: ops.HazeLink((1, 4, 4), gamma=INF), ValueError, "gamma .* got inf"),
    ("hazelink-nan-mu", lambda: ops.HazeLink((1, 4, 4), mu=NAN), ValueError, "mu"),
    # -- noise models -----------------------------------------------------------------------------
    (
        "gaussian-empty-sigma",
        lambda: ops.GaussianNoise(torch.tensor([])),
        ValueError,
        "sigma .* empty tensor",
    ),
    (
        "gaussian-inf-sigma",
        lambda: ops.GaussianNoise(torch.tensor([0.1, INF])),
        ValueError,
        "sigma .* NaN or inf",
    ),
    ("gaussian-zero-sigma", lambda: ops.GaussianNoise(torch.zeros(2)), ValueError, "sigma .* min 0"),
    ("gaussian-bool-sigma", lambda: ops.GaussianNoise(True), TypeError, "sigma must be a real number"),
    (
        "gaussian-complex-sigma",
        lambda: ops.GaussianNoise(torch.ones(2, dtype=torch.cfloat)),
        TypeError,
        "sigma",
    ),
    ("gaussian-str-sigma", lambda: ops.GaussianNoise("0.1"), TypeError, "sigma"),
    ("poisson-bool-min-rate", lambda: ops.PoissonNoise(min_rate=True), TypeError, "min_rate"),
    ("poisson-inf-min-rate", lambda: ops.PoissonNoise(min_rate=INF), ValueError, "min_rate"),
    ("student-empty-df", lambda: ops.StudentTNoise(torch.tensor([])), ValueError, "df"),
    ("pyro-int-site", lambda: ops.PyroLikelihood(lambda z: z, site=3), TypeError, "site must be a str"),
    # -- InverseProblem: noise parameters broadcast to operator.out_shape ---------------------------
    (
        "problem-gaussian-sigma-shape",
        lambda: problem(matrix(), ops.GaussianNoise(torch.ones(5))),
        ValueError,
        r"GaussianNoise\.sigma has shape \(5,\), which does not broadcast to operator\.out_shape \(3,\)",
    ),
    (
        "problem-gaussian-sigma-extra-dim",
        lambda: problem(matrix(), ops.GaussianNoise(torch.ones(2, 3))),
        ValueError,
        r"sigma has shape \(2, 3\)",
    ),
    (
        "problem-laplace-b-shape",
        lambda: problem(matrix(), ops.LaplaceNoise(torch.ones(4))),
        ValueError,
        r"b has",
    ),
    (
        "problem-poisson-gain-shape",
        lambda: problem(matrix(), ops.PoissonNoise(torch.ones(2))),
        ValueError,
        "gain",
    ),
    (
        "problem-student-scale-shape",
        lambda: problem(matrix(), ops.StudentTNoise(3.0, torch.ones(4))),
        ValueError,
        r"StudentTNoise\.scale has shape \(4,\)",
    ),
    # -- InverseProblem: y ------------------------------------------------------------------------
    (
        "problem-y-empty-batch",
        lambda: problem(matrix(), y=torch.zeros(0, 3, dtype=F64)),
        ValueError,
        "n >= 1",
    ),
    (
        "problem-y-nan",
        lambda: problem(matrix(), y=torch.tensor([0.0, NAN, 1.0], dtype=F64)),
        ValueError,
        r"y contains NaN or inf \(1 of 3 entries\)",
    ),
    (
        "problem-y-complex",
        lambda: problem(matrix(), y=torch.zeros(3, dtype=torch.cdouble)),
        TypeError,
        "y has dtype",
    ),
    ("problem-y-list", lambda: problem(matrix(), y=[0.0, 0.0, 0.0]), TypeError, "y must be a torch.Tensor"),
    # -- InverseProblem: a user Function, checked once on a probe input ------------------------------
    (
        "function-int-output",
        lambda: problem(function(lambda x: x.long())),
        TypeError,
        "fn returned dtype torch.int64",
    ),
    (
        "function-complex-output",
        lambda: problem(function(lambda x: x * 1j)),
        TypeError,
        r"Function fn=.*<lambda>.*dtype torch.complex128 .* expected a real floating-point tensor",
    ),
    (
        "function-detached-output",
        lambda: problem(function(lambda x: x.detach() ** 2)),
        ValueError,
        "autograd",
    ),
    (
        "function-numpy-output",
        lambda: problem(function(lambda x: torch.as_tensor(np.tanh(x.detach().numpy())))),
        ValueError,
        "autograd cannot differentiate",
    ),
    ("function-not-tensor", lambda: problem(function(lambda x: 1.0)), TypeError, "fn returned float"),
    (
        "function-wrong-shape",
        lambda: problem(function(lambda x: x[:, :2])),
        ValueError,
        r"fn returned shape \(2, 2\) .* expected \(2, \*out_shape\) = \(2, 3\)",
    ),
    (
        "function-ignores-batch",
        lambda: problem(function(lambda x: x[0] * 2)),
        ValueError,
        r"fn returned shape \(3,\)",
    ),
    (
        "function-inside-composition",
        lambda: problem(function(lambda x: x.detach(), out_shape=(3,)) @ matrix()),
        ValueError,
        "autograd",
    ),
    (
        "function-first-use",
        lambda: function(lambda x: x.long())(torch.zeros(1, 3)),
        TypeError,
        "fn returned dtype",
    ),
    # -- analytic priors --------------------------------------------------------------------------
    (
        "mixture-inf-sigma-max",
        lambda: mixture(sigma_max=INF),
        ValueError,
        "sigma_max must be a finite number > 0, got inf",
    ),
    ("mixture-nan-sigma-min", lambda: mixture(sigma_min=NAN), ValueError, "sigma_min .* got nan"),
    ("mixture-bool-sigma-min", lambda: mixture(sigma_min=True), TypeError, "sigma_min must be a real number"),
    (
        "mixture-sigma-order",
        lambda: mixture(sigma_min=2.0, sigma_max=1.0),
        ValueError,
        "need sigma_min < sigma_max",
    ),
    (
        "mixture-list-means",
        lambda: GaussianMixture([[0.0]], torch.ones(1), 1.0),
        TypeError,
        "means must be a torch",
    ),
    (
        "mixture-int-means",
        lambda: GaussianMixture(torch.zeros(2, 3, dtype=torch.long), torch.ones(2), 1.0),
        TypeError,
        "means",
    ),
    (
        "mixture-empty-means",
        lambda: GaussianMixture(torch.zeros(0, 3), torch.ones(0), 1.0),
        ValueError,
        "K >= 1",
    ),
    (
        "mixture-complex-weights",
        lambda: GaussianMixture(torch.zeros(2, 3), torch.ones(2, dtype=torch.cfloat), 1.0),
        TypeError,
        "weights",
    ),
    (
        "mixture-bool-covariances",
        lambda: GaussianMixture(torch.zeros(2, 3), torch.ones(2), True),
        TypeError,
        "covariances",
    ),
    (
        "mixture-inf-weights",
        lambda: GaussianMixture(torch.zeros(2, 3), torch.tensor([1.0, INF]), 1.0),
        ValueError,
        "weights",
    ),
    (
        "mixture-inf-covariance",
        lambda: GaussianMixture(torch.zeros(2, 3), torch.ones(2), INF),
        ValueError,
        "covariances",
    ),
    ("gaussian-list-mean", lambda: Gaussian([0.0, 0.0], 1.0), TypeError, "mean must be a torch.Tensor"),
    ("gaussian-inf-sigma-max", lambda: Gaussian(torch.zeros(2), 1.0, sigma_max=INF), ValueError, "sigma_max"),
    ("grid-float-dim", lambda: GaussianMixture.grid(2.0), TypeError, "dim must be an int"),
    ("grid-inf-std", lambda: GaussianMixture.grid(2, std=INF), ValueError, "std"),
    ("grid-nan-spacing", lambda: GaussianMixture.grid(2, spacing=NAN), ValueError, "spacing"),
    ("grid-float-seed", lambda: GaussianMixture.grid(2, seed=1.5), TypeError, "seed must be an int"),
    (
        "grid-bool-components",
        lambda: GaussianMixture.grid(2, num_components=True),
        TypeError,
        "num_components",
    ),
    ("random-nan-separation", lambda: GaussianMixture.random(2, separation=NAN), ValueError, "separation"),
    ("random-float-shape", lambda: GaussianMixture.random(4, event_shape=(2.0, 2)), TypeError, "event_shape"),
    ("sample-bool-n", lambda: GaussianMixture.grid(2).sample(True), TypeError, "n must be an int"),
    ("sample-float-n", lambda: GaussianMixture.grid(2).sample(2.0), TypeError, "n must be an int"),
    # -- noise schedules --------------------------------------------------------------------------
    ("ve-inf-sigma-max", lambda: VESchedule(0.01, INF), ValueError, "sigma_max .* got inf"),
    ("ve-bool-log-conditioning", lambda: VESchedule(log_conditioning="yes"), TypeError, "log_conditioning"),
    ("edm-inf-sigma-data", lambda: EDMSchedule(sigma_data=INF), ValueError, "sigma_data"),
    ("edm-nan-sigma-min", lambda: EDMSchedule(sigma_min=NAN), ValueError, "sigma_min"),
    ("vp-float-num-steps", lambda: VPSchedule.linear(num_steps=10.5), TypeError, "num_steps must be an int"),
    (
        "vp-inf-time-scale",
        lambda: VPSchedule.linear(discrete=False, time_scale=INF),
        ValueError,
        "time_scale",
    ),
    (
        "vp-str-discrete",
        lambda: VPSchedule.linear(discrete="no"),
        TypeError,
        "discrete must be True or False",
    ),
    (
        "vp-beta-order",
        lambda: VPSchedule.linear(beta_min=5.0, beta_max=1.0),
        ValueError,
        "beta_min < beta_max",
    ),
    (
        "vp-beta-above-one",
        lambda: VPSchedule.linear(num_steps=10, beta_max=20.0),
        ValueError,
        "beta_max / num_steps",
    ),
    ("vp-zero-beta-min", lambda: VPSchedule.linear(beta_min=0.0), ValueError, "sigma_min"),
    ("vp-t-max-above-one", lambda: VPSchedule.cosine(discrete=False, t_max=1.5), ValueError, "t_max .* <= 1"),
    ("vp-nan-s", lambda: VPSchedule.cosine(s=NAN), ValueError, "s must be a finite number"),
    # -- composite priors -------------------------------------------------------------------------
    ("stacked-not-prior", lambda: StackedPrior([patch_prior(), "prior"]), TypeError, r"priors\[1\]"),
    ("patched-float-frame", lambda: PatchedPrior(patch_prior(), (8.5, 8)), TypeError, "frame"),
    (
        "patched-negative-overlap",
        lambda: PatchedPrior(patch_prior(), (8, 8), overlap=-1),
        ValueError,
        "overlap",
    ),
    ("patched-bool-overlap", lambda: PatchedPrior(patch_prior(), (8, 8), overlap=True), TypeError, "overlap"),
    (
        "patched-float-max-batch",
        lambda: PatchedPrior(patch_prior(), (8, 8), max_batch=1.5),
        TypeError,
        "max_batch",
    ),
    (
        "subspace-not-prior",
        lambda: SubspacePrior("prior", ops.Identity((1, 4, 4))),
        TypeError,
        "prior must be",
    ),
]


@pytest.mark.parametrize("make, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_is_refused_with_a_clear_message(make, error, match):
    with pytest.raises(error, match=match):
        make()


GOOD = [
    ("numpy-int-shape", lambda: ops.Identity((np.int64(2), 3)).in_shape == (2, 3)),
    ("numpy-int-scalar-shape", lambda: ops.Identity(np.int32(4)).in_shape == (4,)),
    ("torch-size-shape", lambda: ops.Identity(torch.Size([2, 2])).in_shape == (2, 2)),
    ("numpy-int-factor", lambda: ops.Downsample((1, 4, 4), np.int64(2)).factor == 2),
    ("numpy-float-std", lambda: ops.Blur.gaussian((1, 8, 8), np.float32(1.0)) is not None),
    ("numpy-int-seed", lambda: GaussianMixture.grid(2, seed=np.int64(3)).num_components == 25),
    ("numpy-int-n", lambda: GaussianMixture.grid(2).sample(np.int64(2)).shape == (2, 2)),
    ("sigma-scalar-tensor", lambda: problem(matrix(), ops.GaussianNoise(torch.tensor([0.1]))) is not None),
    ("sigma-per-element", lambda: problem(matrix(), ops.GaussianNoise(torch.full((3,), 0.1))) is not None),
    (
        "sigma-broadcast-row",
        lambda: problem(ops.Identity((2, 3)), ops.GaussianNoise(torch.ones(1, 3))) is not None,
    ),
    ("function-good", lambda: problem(function(torch.tanh)).operator.out_shape == (3,)),
    ("sigma-range", lambda: mixture(sigma_min=0.01, sigma_max=np.float64(5.0)).sigma_max == 5.0),
]


@pytest.mark.parametrize("check", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_valid_argument_is_accepted(check):
    assert check()


def test_function_is_probed_once():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return torch.tanh(x)

    f = function(fn)
    assert calls == []  # construction with out_shape is free
    problem(f)
    problem(f)
    f(torch.zeros(4, 3, dtype=F64))
    assert calls == [2, 4]  # one probe of batch 2, then the real call
