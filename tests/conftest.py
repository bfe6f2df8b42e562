import pytest
import torch

# Small tensors run 10-50x slower when torch threads are oversubscribed on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def overlapping_problem():
    """A factory: ``overlapping_problem(rows=1)`` is an overlapping 10-mode mixture prior in d = 8 (means
    of scale 2, unit covariances), a random ``(rows, 8)`` operator and ``sigma_y = 0.5``, with ``y``
    simulated from a prior draw: ``(prior, InverseProblem)``, as in ``benchmarks/gmm.py``."""
    import operators as ops
    import posterior as post
    from posterior.priors import GaussianMixture

    def make(rows: int = 1):
        prior = GaussianMixture.random(8, num_components=10, separation=2.0, std=1.0, seed=0)
        g = torch.Generator().manual_seed(1000)
        A = ops.Matrix(torch.randn(rows, 8, generator=g, dtype=torch.float64) / 8**0.5)
        noise = ops.GaussianNoise(0.5)
        y = noise.sample(A(prior.sample(1, seed=2000)), g)[0]
        return prior, post.InverseProblem(A, noise, y)

    return make


def _observed_moment_errors(draws, exact, A):
    """Standardised errors of the mean and variance of ``draws`` along the observed directions.

    The observed directions are the right singular vectors ``v_j`` of the ``(r, d)`` matrix ``A`` (its
    rows, orthonormalised): there the likelihood acts, so that is where a wrong likelihood weight, a
    wrong noise level or a wrong preconditioner shows first. Along ``v_j`` the exact posterior (a
    Gaussian mixture, ``exact``) is a 1-D mixture with means ``a_k`` and variances ``b_k``; with
    ``mu_2``, ``mu_4`` its central moments (closed form: ``sum_k w_k [c_k^2 + b_k]`` and
    ``sum_k w_k [c_k^4 + 6 c_k^2 b_k + 3 b_k^2]``, ``c_k = a_k - mean``), ``n`` independent draws have
    standard errors ``sqrt(mu_2 / n)`` for the mean and ``sqrt((mu_4 - mu_2^2) / n)`` for the
    variance. Returns ``(z_mean, z_var)``, each of shape ``(r,)``: error / standard error.
    """
    A = A.reshape(A.shape[0], -1).to(torch.float64)
    V = torch.linalg.svd(A, full_matrices=False)[2]  # (r, d), orthonormal rows spanning A's row space
    K = exact.num_components
    a = exact.means.reshape(K, -1) @ V.T  # (K, r)
    b = torch.einsum("ri,kij,rj->kr", V, exact.covariance_matrices(), V)
    w = exact.weights[:, None]
    mean = (w * a).sum(0)
    c = a - mean
    mu2 = (w * (c**2 + b)).sum(0)
    mu4 = (w * (c**4 + 6 * c**2 * b + 3 * b**2)).sum(0)
    z = draws.reshape(draws.shape[0], -1).to(torch.float64) @ V.T
    n = z.shape[0]
    return (z.mean(0) - mean) / (mu2 / n).sqrt(), (z.var(0) - mu2) / ((mu4 - mu2**2) / n).sqrt()


@pytest.fixture
def observed_moment_errors():
    """The function ``(draws, exact, A) -> (z_mean, z_var)`` of :func:`_observed_moment_errors`."""
    return _observed_moment_errors


@pytest.fixture
def noise_doubled_exact():
    """A deliberately wrong sampler: exact draws from the posterior of the problem with ``sigma_y`` doubled
    (too wide along the observed directions, the data's pull halved in the mode weights)."""
    import operators as ops
    import posterior as post

    class NoiseDoubled(post.samplers.ExactPosterior):
        def build_kernel(self, problem, prior, chains, num_samples, group=None):
            wider = post.InverseProblem(
                problem.operator, ops.GaussianNoise(2 * problem.noise.sigma), problem.y
            )
            return super().build_kernel(wider, prior, chains, num_samples, group)

    return NoiseDoubled()


class _SignAmbiguousReference:
    """A small non-linear problem and its posterior by quadrature (see :func:`sign_ambiguous_problem`)."""

    FEATURES = ("x0", "x1", "x0^2", "x1^2", "x0*x1", "P(x0>0)", "P(x1>0)")

    def __init__(self):
        import operators as ops
        import posterior as post
        from posterior.priors import GaussianMixture

        self.prior = GaussianMixture.random(2, num_components=3, separation=2.0, std=0.7, seed=0)
        operator = ops.Function(lambda x: x**2, (2,), (2,))
        noise = ops.GaussianNoise(0.5)
        y = noise.sample(operator(self.prior.sample(1, seed=1)), torch.Generator().manual_seed(2))[0]
        self.problem = post.InverseProblem(operator, noise, y)
        # quadrature: the unnormalised posterior p(x) p(y | x) at the centres of 800 x 800 cells of [-6, 6]^2
        t = -6.0 + 12.0 * (torch.arange(800, dtype=torch.float64) + 0.5) / 800
        grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        weights = torch.softmax(self.prior.log_prob(grid) + self.problem.log_likelihood(grid), 0)
        self.reference = weights @ self.features(grid)

    @staticmethod
    def features(x):
        """``(n, 2) -> (n, 7)``: the statistics of :attr:`FEATURES`."""
        x0, x1 = x[:, 0], x[:, 1]
        return torch.stack([x0, x1, x0**2, x1**2, x0 * x1, (x0 > 0).double(), (x1 > 0).double()], 1)

    def errors(self, result):
        """Per-feature error of the pooled estimate and its standard error from the spread of the runs.

        Each of the ``B`` runs (chains) gives a (weighted, for SMC) estimate of every feature; the pooled
        estimate is their mean and its standard error their standard deviation over ``sqrt(B)``.
        Returns ``(error, z)``, each of shape ``(7,)``; ``z = error / standard error``.
        """
        x = result.samples.double()
        B, N = x.shape[:2]
        log_w = result.log_weights if result.log_weights is not None else x.new_zeros(B, N)
        W = torch.softmax(log_w.double(), 1)
        runs = torch.einsum("bn,bnf->bf", W, self.features(x.reshape(B * N, 2)).reshape(B, N, -1))
        error = runs.mean(0) - self.reference
        return error, error / (runs.std(0) / B**0.5)


@pytest.fixture(scope="session")
def sign_ambiguous_problem():
    """A non-linear problem with an analytic prior and its exact posterior moments.

    ``y = x^2 + N(0, 0.5^2 I)`` elementwise in d = 2 with a 3-mode Gaussian-mixture prior (std 0.7,
    ``GaussianMixture.random(2, 3, seed=0)``), ``y`` simulated from a prior draw: the data fix
    ``|x_j|`` and the prior decides the signs, so the posterior has four sign modes (measured
    ``P(x0 > 0) = 0.517``, ``P(x1 > 0) = 0.535``, ``E x0^2 = 6.80``). The reference moments come from
    quadrature of ``p(x) p(y | x)`` at the centres of 800 x 800 cells of [-6, 6]^2 (spacing 0.015, a
    sixth of the smallest posterior std, 0.096; a 2000 x 2000 grid of [-7, 7]^2 agrees to 1e-6): deterministic, so the tolerance of
    a test is the sampler's Monte-Carlo error alone. ``.errors(result)`` gives each feature's error and
    z-score (see :class:`_SignAmbiguousReference`)."""
    return _SignAmbiguousReference()


@pytest.fixture(autouse=True)
def _private_temporary_folder(tmp_path_factory, monkeypatch):
    """Files a run writes to the temporary folder (a failed run's last good state) stay in the test's own."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("tmp")))


@pytest.fixture
def cli_outcome(capsys):
    """``cli_outcome(argv)``: the exit status of ``posterior argv`` and its lines on stderr, warnings left out."""
    from posterior import cli

    def outcome(argv: list[str]) -> tuple[int, list[str]]:
        capsys.readouterr()
        try:
            cli.main(argv)
            status = 0
        except SystemExit as exit:
            status = exit.code
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        return status, [line for line in lines if "Warning" not in line and not line.startswith("  ")]

    return outcome
