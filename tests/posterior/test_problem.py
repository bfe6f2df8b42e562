import pyro
import pyro.distributions as dist
import pytest
import torch

import operators as ops
import posterior as post


def make_problem(dtype=torch.float64):
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))
    return post.InverseProblem(A, ops.GaussianNoise(0.1), torch.randn(3, dtype=dtype))


def test_log_likelihood_and_gradient():
    problem = make_problem()
    x = torch.randn(5, 4, dtype=torch.float64)
    ll = problem.log_likelihood(x)
    assert ll.shape == (5,)
    M = problem.operator.matrix
    ref_grad = (problem.y - x @ M.T) @ M / 0.1**2
    torch.testing.assert_close(problem.grad_log_likelihood(x), ref_grad)
    assert problem.is_linear_gaussian
    assert not post.InverseProblem(problem.operator, ops.LaplaceNoise(0.1), problem.y).is_linear_gaussian


def test_batched_measurements_pair_with_samples():
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))
    y = torch.randn(5, 3, dtype=torch.float64)
    problem = post.InverseProblem(A, ops.GaussianNoise(0.1), y)
    x = torch.randn(5, 4, dtype=torch.float64)
    single = torch.stack(
        [
            post.InverseProblem(A, ops.GaussianNoise(0.1), y[i]).log_likelihood(x[i : i + 1])[0]
            for i in range(5)
        ]
    )
    torch.testing.assert_close(problem.log_likelihood(x), single)
    with pytest.raises(ValueError, match="batch size 2 but y holds 5"):
        problem.log_likelihood(x[:2])


def test_shape_mismatch_names_y():
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"y has shape \(5,\), expected operator.out_shape \(3,\)"):
        post.InverseProblem(A, ops.GaussianNoise(0.1), torch.zeros(5, dtype=torch.float64))


def test_wrong_dtype():
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="y has dtype torch.int64"):
        post.InverseProblem(A, ops.GaussianNoise(0.1), torch.zeros(3, dtype=torch.long))
    problem = make_problem(torch.float64)
    with pytest.raises(TypeError, match="x has dtype torch.float32"):
        problem.log_likelihood(torch.zeros(2, 4))


def test_wrong_device():
    problem = make_problem()
    x = torch.zeros(2, 4, dtype=torch.float64, device="meta")
    with pytest.raises(ValueError, match="x is on device meta"):
        problem.log_likelihood(x)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_y(bad):
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        post.InverseProblem(A, ops.GaussianNoise(0.1), torch.tensor([0.0, bad, 1.0], dtype=torch.float64))


def test_negative_counts_rejected_for_poisson():
    with pytest.raises(ValueError, match="non-negative counts"):
        post.InverseProblem(ops.Identity(2), ops.PoissonNoise(), torch.tensor([1.0, -1.0]))


def test_wrong_types():
    with pytest.raises(TypeError, match="operator must be"):
        post.InverseProblem("A", ops.GaussianNoise(0.1), torch.zeros(3))
    with pytest.raises(TypeError, match="noise must be"):
        post.InverseProblem(ops.Identity(3), 0.1, torch.zeros(3))


def test_pyro_problem_gradient_matches_gaussian():
    y = torch.randn(3, dtype=torch.float64)
    A = ops.Matrix(torch.randn(3, 4, dtype=torch.float64))

    def model(z):
        return pyro.sample("y", dist.Normal(z, 0.2).to_event(1), obs=y)

    x = torch.randn(4, 4, dtype=torch.float64)
    p_pyro = post.InverseProblem(A, ops.PyroLikelihood(model), y)
    p_gauss = post.InverseProblem(A, ops.GaussianNoise(0.2), y)
    torch.testing.assert_close(p_pyro.grad_log_likelihood(x), p_gauss.grad_log_likelihood(x))
