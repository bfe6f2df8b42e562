"""The evidence ``log p(y)`` that SMC runs estimate, and the comparison of models by it.

Every particle sampler (AFDPS, TDS, MCGdiff) records each run's estimate ``Z_r`` of ``p(y)`` (the
product over steps of the mean incremental weight, unbiased for a fixed kernel). Independent runs of
one measurement pool into ``log mean_r Z_r``; its standard error comes from the runs' spread by the
delta method, ``sd(Z_r / Z_max) / sqrt(R) / mean(Z_r / Z_max)``. :func:`compare` puts several models
(noise levels, operators, priors) fitted to the same ``y`` side by side: log-evidence, difference to
the best with its standard error, and the posterior probability of each model.

The evidence of a model is only comparable with another's when both describe the same ``y`` with
normalised likelihoods; the library's noise models are normalised densities (``log_likelihood``
includes every constant). The standard error covers the Monte-Carlo spread of the runs only, not the
bias that the runs share: the discretisation of the prior's chain and, for TDS, its over-confident
twist (``docs/smc.md`` gives the measured sizes). Between models that share the prior and the sampler
and differ in the noise level most of that bias cancels in the differences, which is where
``compare`` is tested; between operators or priors it need not.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Evidence:
    """``log p(y)`` from independent runs.

    Attributes
    ----------
    log_z : float
        ``log mean_r Z_r`` over the runs.
    standard_error : float
        Its Monte-Carlo standard error from the runs' spread (not the bias the runs share: module
        docstring); NaN for one run.
    runs : tuple of float
        Each run's ``log Z_r``.
    """

    log_z: float
    standard_error: float
    runs: tuple[float, ...]


def log_evidence(result) -> Evidence:
    """The pooled :class:`Evidence` of a :class:`~posterior.PosteriorSamples` whose chains are
    independent SMC runs of one measurement.

    Raises ``ValueError`` for results without evidence estimates (samplers other than the particle
    samplers) and for runs that answered different measurements (a batched ``y``: read each run's
    estimate from ``result.trace["log_evidence"][-1]`` instead).
    """
    name = result.sampler or "this result"
    if "log_evidence" not in result.trace:
        raise ValueError(
            f"{name} does not estimate the evidence p(y): use a particle sampler (AFDPS, TDS, MCGdiff), "
            "or ExactPosterior where the posterior is analytic"
        )
    if not result.shared_measurement:
        raise ValueError(
            f"{name}: the runs answered different measurements (a batched y), so their evidences do not "
            "pool; each run's log p(y) is in result.trace['log_evidence'][-1]"
        )
    runs = torch.as_tensor(result.trace["log_evidence"])[-1].double().reshape(-1)
    if bool(torch.isnan(runs).any() or (runs == torch.inf).any()):
        raise ValueError(f"{name}: a run's evidence estimate is NaN or +inf: {runs.tolist()}")
    if bool((runs == -torch.inf).all()):  # every run's weights died
        return Evidence(-math.inf, math.nan, tuple(float(v) for v in runs))
    top = runs.max()
    z = torch.exp(runs - top)
    mean = z.mean()
    se = float(z.std() / math.sqrt(z.numel()) / mean) if z.numel() > 1 else math.nan
    return Evidence(float(top + torch.log(mean)), se, tuple(float(v) for v in runs))


def compare(results: Mapping[Hashable, object], prior_probabilities: Mapping[Hashable, float] | None = None):
    """Models compared by their evidence for the same ``y``: a ``pandas.DataFrame``, best model first.

    Parameters
    ----------
    results : mapping of model name (any hashable, e.g. a noise level) to PosteriorSamples
        One result per model (e.g. per noise level, operator or prior), each of independent SMC runs
        (``chains >= 2`` for standard errors; one run gives NaN) of the same measurement.
    prior_probabilities : mapping of model name to float, optional
        Prior probability of each model (normalised here); equal by default.

    Returns
    -------
    pandas.DataFrame
        Index: the model names. Columns ``log_evidence`` and ``standard_error``; ``difference``, the
        log Bayes factor against the best model, and ``difference_se`` (independent runs:
        ``sqrt(se^2 + se_best^2)``, 0 for the best); ``probability``, the posterior probability of the
        model (``softmax(log_evidence + log prior)``).

    Raises ``ValueError`` for results that answered different measurements (their
    :attr:`~posterior.PosteriorSamples.measurement` digests differ) and as :func:`log_evidence` does.
    """
    import pandas as pd

    if len(results) < 2:
        raise ValueError(f"compare needs at least 2 models, got {len(results)}")
    names = list(results)
    evidence = {name: log_evidence(results[name]) for name in names}
    if prior_probabilities is None:
        prior_probabilities = dict.fromkeys(names, 1.0)
    if set(prior_probabilities) != set(names) or not all(
        math.isfinite(p) and p > 0 for p in prior_probabilities.values()
    ):
        raise ValueError(
            "prior_probabilities must give a positive finite number for each model, and no other"
        )
    digests = {results[n].measurement for n in names} - {""}  # "" where unknown
    if len(digests) > 1:
        raise ValueError(
            "the results answered different measurements y: evidences compare models of one y only "
            "(each result's measurement digest: "
            + ", ".join(f"{n!r}: {results[n].measurement or 'unknown'}" for n in names)
            + ")"
        )
    if not any(math.isfinite(evidence[n].log_z) for n in names):
        raise ValueError("no model has a finite evidence estimate: every run's weights died")
    names.sort(key=lambda n: -evidence[n].log_z)  # best first; ties keep the given order
    log_z = torch.tensor([evidence[n].log_z for n in names], dtype=torch.float64)
    log_prior = torch.log(torch.tensor([prior_probabilities[n] for n in names], dtype=torch.float64))
    probability = torch.softmax(log_z + log_prior, 0)
    best = names[0]
    table = pd.DataFrame(
        {
            "log_evidence": [evidence[n].log_z for n in names],
            "standard_error": [evidence[n].standard_error for n in names],
            "difference": [evidence[n].log_z - evidence[best].log_z for n in names],
            "difference_se": [
                0.0 if n == best else math.hypot(evidence[n].standard_error, evidence[best].standard_error)
                for n in names
            ],
            "probability": probability.numpy(),
        },
        index=pd.Index(names, name="model"),
    )
    return table
