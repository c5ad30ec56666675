"""Uniform dequantisation and bits/dim on the [0, 256) scale (dfcore.dequantize)."""

from __future__ import annotations

import math

import pytest
import torch

from dfcore.dequantize import bits_per_dim_256, dequantize, dequantize_images, image_bits_per_dim


@pytest.mark.parametrize("scale", ["minus_one_one", "zero_one"])
def test_change_of_variables_against_a_gaussian(scale):
    """A Gaussian N(m, s^2 I) on the model scale x = a y + b is the Gaussian N((m - b)/a, (s/a)^2 I) on the
    256 scale: its bits/dim computed there directly equals bits_per_dim_256 of the model-scale log density."""
    a, b = {"minus_one_one": (1 / 127.5, -1.0), "zero_one": (1 / 256, 0.0)}[scale]
    gen = torch.Generator().manual_seed(0)
    d, m, s = 12, 0.1, 0.3
    y = 256 * torch.rand(5, d, generator=gen, dtype=torch.float64)
    x = a * y + b
    f64 = {"dtype": torch.float64}
    log_q = torch.distributions.Normal(torch.tensor(m, **f64), torch.tensor(s, **f64)).log_prob(x).sum(1)
    log_p = torch.distributions.Normal(torch.tensor((m - b) / a, **f64), torch.tensor(s / a, **f64)).log_prob(y).sum(1)
    direct = -log_p / (d * math.log(2))
    torch.testing.assert_close(bits_per_dim_256(log_q, d, scale), direct, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(bits_per_dim_256(log_q, d, a), direct, rtol=1e-12, atol=1e-10)
    # the shift is -log2 a per dimension: +log2(127.5) for [-1, 1], +8 for [0, 1)
    shift = {"minus_one_one": math.log2(127.5), "zero_one": 8.0}[scale]
    torch.testing.assert_close(direct + log_q / (d * math.log(2)), torch.full((5,), shift, dtype=torch.float64))


def test_uniform_density_gives_eight_bits():
    """The uniform density on [0, 256)^d has exactly 8 bits/dim; on the [-1, 1] model scale it is
    the uniform density on [-1, 1 + 1/127.5)^d."""
    d = 7
    width = 256 / 127.5
    log_q = torch.full((3,), -d * math.log(width), dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim_256(log_q, d), torch.full((3,), 8.0, dtype=torch.float64))


def test_draws_lie_in_their_bins():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 1, 4, 4), generator=gen, dtype=torch.uint8)
    images[0] = 255
    images[1] = 0
    deq = dequantize_images(images, gen, num_draws=3)
    assert deq.x.shape == (18, 1, 4, 4) and deq.x.dtype == torch.float64 and deq.num_draws == 3
    assert deq.dequantization == "uniform" and deq.scale == "minus_one_one"
    y = (deq.x + 1.0) * 127.5
    k = images.to(torch.float64).repeat(3, 1, 1, 1)
    assert ((y >= k - 1e-9) & (y < k + 1)).all()
    assert torch.equal(deq.image_index, torch.arange(6).repeat(3))
    # the three draws differ, and u is spread over [0, 1)
    u = (y - k).flatten()
    assert u.min() < 0.1 and u.max() > 0.9 and abs(u.mean().item() - 0.5) < 0.1
    y01 = dequantize(images, gen, "zero_one") * 256
    assert ((y01 >= images - 1e-9) & (y01 < images.double() + 1)).all()


def test_bits_per_dim_of_images_averages_the_draws():
    images = torch.tensor([[[[0, 10], [20, 255]]], [[[3, 3], [3, 3]]]], dtype=torch.uint8)
    deq = dequantize_images(images, torch.Generator().manual_seed(2), num_draws=2)
    log_q = torch.tensor([-1.0, -2.0, -3.0, -6.0], dtype=torch.float64)  # draw-major: (draw 0: img 0, 1), (draw 1)
    res = image_bits_per_dim(log_q, deq, t_min=1e-3)
    expected = bits_per_dim_256(torch.tensor([-2.0, -4.0], dtype=torch.float64), 4)
    torch.testing.assert_close(res.bpd, expected)
    assert res.protocol() == {
        "dim": 4,
        "t_min": 1e-3,
        "num_draws": 2,
        "scale": "minus_one_one",
        "dequantization": "uniform",
    }
    with pytest.raises(ValueError, match="shape"):
        image_bits_per_dim(log_q[:3], deq, t_min=1e-3)


def test_bad_inputs_are_refused():
    log_q = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="dim must be a positive integer; got 0"):
        bits_per_dim_256(log_q, 0)
    with pytest.raises(ValueError, match="unknown data scale 'pixels'"):
        bits_per_dim_256(log_q, 4, "pixels")
    with pytest.raises(ValueError, match="uint8.*torch.float32"):
        dequantize(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="uint8.*int64"):
        dequantize_images(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_draws"):
        dequantize_images(torch.zeros(2, 3, dtype=torch.uint8), num_draws=0)
