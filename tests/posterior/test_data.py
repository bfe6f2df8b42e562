"""Offline data sets: shapes, ranges, fixed splits and seeded phantoms."""

import pytest
import torch

from posterior.data import digits, held_out_phantoms, phantoms, shepp_logan


@pytest.fixture(scope="module")
def sklearn():
    return pytest.importorskip("sklearn")


@pytest.mark.parametrize(("split", "n"), [("train", 1500), ("test", 297), ("all", 1797)])
def test_digits_shapes_and_range(sklearn, split, n):
    x = digits(split, size=16)
    assert x.shape == (n, 1, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.max()) > 0.9  # values 0..16 were scaled, not squashed


def test_digits_native_size_is_the_raw_data(sklearn):
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
    torch.testing.assert_close(digits("all", size=8)[:, 0], raw)


def test_digits_split_is_fixed_and_disjoint(sklearn):
    train, test, full = digits("train", 8), digits("test", 8), digits("all", 8)
    torch.testing.assert_close(train, digits("train", 8))
    torch.testing.assert_close(test, digits("test", 8))
    # The 1797 images are pairwise distinct, so disjoint splits share no image and together give all.
    flat, tr, te = (z.reshape(len(z), -1) for z in (full, train, test))
    assert float(torch.cdist(te, tr).min()) > 0
    d_train, d_test = torch.cdist(tr, flat), torch.cdist(te, flat)
    assert bool((d_train.min(1).values == 0).all()) and bool((d_test.min(1).values == 0).all())
    found = set(d_train.argmin(1).tolist()) | set(d_test.argmin(1).tolist())
    assert found == set(range(1797))


def test_digits_bad_arguments(sklearn):
    with pytest.raises(ValueError, match="split"):
        digits("validation")
    with pytest.raises(ValueError, match="size"):
        digits("train", size=0)


def test_phantoms_shapes_range_and_determinism():
    x = phantoms(20, size=24, seed=3)
    assert x.shape == (20, 1, 24, 24) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    torch.testing.assert_close(x, phantoms(20, size=24, seed=3))
    torch.testing.assert_close(x, phantoms(20, size=24, seed=torch.Generator().manual_seed(3)))
    assert not torch.equal(x, phantoms(20, size=24, seed=4))
    assert not torch.equal(x[0], x[1])
    # The first draws do not depend on how many are asked for.
    torch.testing.assert_close(phantoms(5, size=24, seed=3), phantoms(7, size=24, seed=3)[:5])


def test_phantoms_structure():
    x = phantoms(50, size=32, seed=0, supersample=1)
    corners = x[..., :3, :3]
    assert float(corners.abs().max()) == 0.0  # background outside the skull
    centre = x[..., 12:20, 12:20]
    assert float(centre.mean()) > 0.1  # body of moderate intensity
    assert float(x.amax((1, 2, 3)).min()) >= 0.85  # a bright skull in every phantom
    # Inner structures vary: more than skull + body levels inside.
    assert all(len(torch.unique(img)) > 3 for img in x)


def test_phantoms_antialiasing_gives_intermediate_values():
    hard, soft = phantoms(4, 32, seed=1, supersample=1), phantoms(4, 32, seed=1, supersample=2)
    assert hard.shape == soft.shape
    assert len(torch.unique(soft)) > len(torch.unique(hard))


def test_shepp_logan_shape_and_range():
    pytest.importorskip("skimage")
    x = shepp_logan(32)
    assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert float(x[..., 0, 0]) == 0.0 and float(x[..., 16, 16]) > 0.0
    assert shepp_logan(64).shape == (1, 1, 64, 64)


def test_held_out_phantoms_are_shepp_logan_then_the_validation_seed():
    images = held_out_phantoms(3, 16)
    assert images.shape == (3, 1, 16, 16)
    assert torch.equal(images[0], shepp_logan(16)[0])
    assert torch.equal(images[1:], phantoms(2, 16, seed=10_000).reshape(2, 1, 16, 16))
    assert torch.equal(held_out_phantoms(1, 16), shepp_logan(16))
    with pytest.raises(ValueError, match="count must be >= 1"):
        held_out_phantoms(0)
