"""Samplers check their settings and ``sample()`` its arguments before any work, in one line that names
the argument, its value and what was expected."""

import dataclasses
import math
import typing

import numpy as np
import pytest
import torch

import operators as ops
import posterior as post
from posterior.diagnostics import MeasurementWarning
from posterior.priors import GaussianMixture

S = post.samplers
CONCRETE = [
    S.AFDPS,
    S.TDS,
    S.MCGdiff,
    S.DPS,
    S.DDS,
    S.DiffusionMBIR,
    S.LevenbergMarquardtLangevin,
    S.DenoisingLangevinGibbs,
    S.RedDiff,
    S.JointPosterior,
]

BAD_SETTINGS = {  # case -> (constructor, error type, phrase of the message)
    "steps=3.0": (lambda: S.AFDPS(steps=3.0), TypeError, "AFDPS: steps must be an int, got 3.0"),
    "steps=2.5": (lambda: S.DPS(steps=2.5), TypeError, "DPS: steps must be an int, got 2.5"),
    "steps=True": (lambda: S.MCGdiff(steps=True), TypeError, "steps must be an int, got True"),
    "steps=1": (lambda: S.TDS(steps=1), ValueError, "TDS: steps must be >= 2, got 1"),
    "corrector_steps=1.5": (lambda: S.DPS(corrector_steps=1.5), TypeError, "corrector_steps must be an int"),
    "rho=inf": (lambda: S.AFDPS(rho=math.inf), ValueError, "rho must be a finite number, got inf"),
    "rho=1e-3": (lambda: S.AFDPS(rho=1e-3), ValueError, "rho must be in [0.1, 100], got 0.001"),
    "sigma_data=0": (lambda: S.JointPosterior(sigma_data=0), ValueError, "sigma_data must be > 0"),
    "step_size=(1, -2)": (
        lambda: S.JointPosterior(step_size=(1.0, -2.0)),
        ValueError,
        "step_size must be >= 0",
    ),
    "step_size='big'": (
        lambda: S.JointPosterior(step_size="big"),
        TypeError,
        "step_size must be a float or a tuple",
    ),
    "twist": (lambda: S.AFDPS(twist="tweedy"), ValueError, "twist must be one of 'auto', 'tweedie'"),
    "resample=1": (lambda: S.AFDPS(resample=1), TypeError, "resample must be a bool, got 1"),
    "tempering_scale=nan": (
        lambda: S.TDS(tempering_scale=math.nan),
        ValueError,
        "tempering_scale must be a finite number",
    ),
    "gamma=0": (lambda: S.DenoisingLangevinGibbs(gamma=0), ValueError, "gamma must be > 0"),
    "classifier=3": (
        lambda: S.DenoisingLangevinGibbs(classifier=3),
        TypeError,
        "classifier must be a string or None, got 3",
    ),
    "classifier unknown": (
        lambda: S.DenoisingLangevinGibbs(classifier="nope"),
        ValueError,
        "classifier must be a bundled prior's name",
    ),
    "residual": (lambda: S.DenoisingLangevinGibbs(sigma_posterior="residual"), ValueError, "use 'flow'"),
    "sigma_low >= sigma_high": (
        lambda: S.DenoisingLangevinGibbs(sigma_low=2.0, sigma_high=1.0),
        ValueError,
        "need sigma_low < sigma_high",
    ),
    "kappa=1": (lambda: S.LevenbergMarquardtLangevin(kappa=1.0), ValueError, "kappa must be in [0, 1)"),
    "tail_fraction=1": (lambda: S.RedDiff(tail_fraction=1.0), ValueError, "tail_fraction must be in [0, 1)"),
    "sigma_max <= sigma_min": (
        lambda: S.RedDiff(sigma_max=0.05),
        ValueError,
        "sigma_max must be > sigma_min",
    ),
}


@pytest.mark.parametrize("case", BAD_SETTINGS)
def test_a_bad_setting_is_refused_in_one_line(case):
    build, error, phrase = BAD_SETTINGS[case]
    with pytest.raises(error) as err:
        build()
    assert phrase in str(err.value) and "\n" not in str(err.value)


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kinds = typing.get_args(hints[field.name]) or (hints[field.name],)
        if int in kinds or float in kinds:
            yield field.name, int if int in kinds else float


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_every_numeric_setting_refuses_bools_nan_and_fractions(cls):
    """Generated from the annotations: a bool is not a number, a float is finite, an int is whole."""
    for name, kind in numeric_fields(cls):
        with pytest.raises(TypeError, match=f"{name} must be"):
            cls(**{name: True})
        with pytest.raises((TypeError, ValueError), match=f"{name} must be"):
            cls(**{name: math.nan})
        if kind is int:
            with pytest.raises(TypeError, match=f"{name} must be an int, got 2.5"):
                cls(**{name: 2.5})


def test_numpy_numbers_and_ints_for_floats_are_normalised():
    sampler = S.AFDPS(steps=np.int64(20), rho=np.float32(7), ess_threshold=1)
    assert sampler == S.AFDPS(steps=20, rho=7.0, ess_threshold=1.0)
    assert type(sampler.steps) is int and type(sampler.ess_threshold) is float


@pytest.fixture(scope="module")
def mixture_problem():
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Matrix(torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    return prior, post.InverseProblem(A, ops.GaussianNoise(0.5), torch.tensor([1.0], dtype=torch.float64))


BAD_ARGUMENTS = {  # sample() keyword arguments -> (error type, phrase)
    "num_samples=True": ({"num_samples": True}, TypeError, "num_samples must be an int, got True"),
    "num_samples=0": ({"num_samples": 0}, ValueError, "num_samples must be a positive int, got 0"),
    "chains=1.0": ({"chains": 1.0}, TypeError, "chains must be an int, got 1.0"),
    "seed=2**70": ({"seed": 2**70}, ValueError, "seed must be at most 18446744073709551615"),
    "seed=-1": ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    "seed=1.5": ({"seed": 1.5}, TypeError, "seed must be an int"),
    "max_batch=0": ({"max_batch": 0}, ValueError, "max_batch must be a positive int"),
    "checkpoint_every=True": (
        {"checkpoint_every": True},
        TypeError,
        "checkpoint_every must be an int",
    ),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_sample_arguments_are_refused(case, mixture_problem):
    prior, problem = mixture_problem
    kwargs, error, phrase = BAD_ARGUMENTS[case]
    kwargs = {"num_samples": 4, "progress": False, **kwargs}
    with pytest.raises(error) as err:
        S.DPS(steps=4).sample(problem, prior, **kwargs)
    assert phrase in str(err.value)


def test_a_numpy_seed_is_the_same_seed(mixture_problem):
    prior, problem = mixture_problem
    a = S.DPS(steps=4).sample(problem, prior, 4, seed=np.int64(7), progress=False)
    b = S.DPS(steps=4).sample(problem, prior, 4, seed=7, progress=False)
    assert torch.equal(a.samples, b.samples)


LANGEVIN = {
    "lml": lambda: S.LevenbergMarquardtLangevin(steps=6),
    "dlg": lambda: S.DenoisingLangevinGibbs(levels=4, burn_in=2, init_steps=2, ode_steps=1),
}


@pytest.mark.parametrize("name", LANGEVIN)
def test_langevin_samplers_name_no_setting_they_lack(name):
    """A likelihood without curvature (Laplace): the message names the sampler and no tempering_scale
    setting of its own."""
    prior = GaussianMixture.grid(2, seed=0)
    problem = post.InverseProblem(
        ops.Identity((2,)), ops.LaplaceNoise(0.5), torch.tensor([1.0, 0.0], dtype=torch.float64)
    )
    with pytest.raises(ValueError) as err:
        LANGEVIN[name]().sample(problem, prior, 4, seed=0, progress=False)
    message = str(err.value)
    assert type(LANGEVIN[name]()).__name__ + " needs a likelihood with curvature" in message
    assert "set tempering_scale" not in message


@pytest.mark.parametrize("name", LANGEVIN)
def test_a_forward_model_gone_nan_is_blamed_not_the_denoiser(name):
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Function(lambda x: torch.sqrt(x[:, :1] + 3.0), in_shape=(2,), out_shape=(1,))
    problem = post.InverseProblem(A, ops.GaussianNoise(0.5), torch.tensor([1.0], dtype=torch.float64))
    with (
        pytest.raises(FloatingPointError) as err,
        pytest.warns(MeasurementWarning, match="non-finite values on"),
    ):
        LANGEVIN[name]().sample(problem, prior, 4, seed=0, progress=False)
    assert "the data term (the forward model or the likelihood" in str(err.value)
    assert "the denoiser returned" not in str(err.value)


@pytest.mark.parametrize("name", LANGEVIN)
def test_a_forward_model_not_finite_at_the_prior_mean_is_named(name):
    """sqrt of a coordinate that is negative at the prior mean: the forward model is blamed, not the
    noise model's curvature."""
    prior = GaussianMixture.grid(2, seed=0)
    A = ops.Function(lambda x: torch.sqrt(x[:, :1] - 100.0), in_shape=(2,), out_shape=(1,))
    problem = post.InverseProblem(A, ops.GaussianNoise(0.5), torch.tensor([1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="the forward model or the likelihood is not finite"), pytest.warns(
        MeasurementWarning
    ):
        LANGEVIN[name]().sample(problem, prior, 4, seed=0, progress=False)
