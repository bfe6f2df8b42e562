"""posterior: Bayesian posterior sampling for inverse problems ``y = A(x) + noise`` with diffusion priors."""

import importlib
import importlib.util
import typing

# The submodules and classes load on first use (PEP 562), so that `import posterior.cli` and
# `posterior --help` do not import torch.
_LAZY = {
    "diagnostics": "posterior.diagnostics",
    "distributed": "posterior.distributed",
    "metrics": "posterior.metrics",
    "priors": "posterior.priors",
    "samplers": "posterior.samplers",
    "InverseProblem": "posterior.problem",
    "PosteriorSamples": "posterior.results",
    "compare": "posterior.evidence",
    "sample_with_parameters": "posterior.parameters",
}
_OBJECTS = {
    "InverseProblem",
    "PosteriorSamples",
    "compare",
    "sample_with_parameters",
}  # attributes of their module, not modules
if typing.TYPE_CHECKING:
    from posterior import diagnostics, distributed, metrics, priors, samplers
    from posterior.evidence import compare
    from posterior.parameters import sample_with_parameters
    from posterior.problem import InverseProblem
    from posterior.results import PosteriorSamples

__version__ = "0.1.0"

__all__ = [
    "InverseProblem",
    "PosteriorSamples",
    "__version__",
    "compare",
    "diagnostics",
    "distributed",
    "metrics",
    "priors",
    "sample_with_parameters",
    "samplers",
]


def __getattr__(name: str):
    if name not in _LAZY:
        if name.startswith("_") or importlib.util.find_spec(f"posterior.{name}") is None:
            raise AttributeError(f"module 'posterior' has no attribute {name!r}")
        _LAZY[name] = f"posterior.{name}"  # any other submodule (utils, plots, data, cli, ...)
    module = importlib.import_module(_LAZY[name])
    value = getattr(module, name) if name in _OBJECTS else module
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
