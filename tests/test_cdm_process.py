"""The compression-aware forward process and its DDIM inverse."""

import pytest
import torch

from codec.cdm.process import (alphas_cumprod, ddim_step, ddim_timesteps, forward_process, gamma, n_r_for_level,
                               start_point)  # fmt: skip


def test_schedule_is_stable_diffusions():
    ac = alphas_cumprod()
    assert len(ac) == 1000 and ac[0] == pytest.approx(1 - 0.00085) and ac[-1] == pytest.approx(0.0047, abs=2e-4)


@pytest.mark.parametrize("n_r", [50, 300, 800])
def test_forward_process_at_n_r_is_the_noised_decoded_latent(n_r):
    torch.manual_seed(0)
    z0, z_hat, eps = torch.randn(3, 2, 4, 8, 8).unbind(0)
    ac = alphas_cumprod()
    n = torch.full((2,), n_r)
    z_n, eff = forward_process(z0, z_hat, n, n, eps, ac)
    a = ac[n_r]
    assert torch.allclose(z_n, a.sqrt() * z_hat + (1 - a).sqrt() * eps, atol=1e-5)
    assert torch.allclose(z_n, start_point(z_hat, n_r, eps, ac), atol=1e-5)
    assert torch.allclose(eff, eps + gamma(a).float() * (z_hat - z0), atol=1e-5)


def test_forward_process_at_intermediate_steps_matches_the_formula():
    torch.manual_seed(1)
    z0, z_hat, eps = torch.randn(3, 3, 4, 8, 8).unbind(0)
    ac = alphas_cumprod()
    n, n_r = torch.tensor([0, 120, 399]), torch.tensor([400, 400, 400])
    z_n, _ = forward_process(z0, z_hat, n, n_r, eps, ac)
    g = (ac[400] / (1 - ac[400])).sqrt()
    for i in range(3):
        a = ac[n[i]]
        expect = a.sqrt() * z0[i] + (1 - a).sqrt() * (eps[i] + g * (z_hat[i] - z0[i]))
        assert torch.allclose(z_n[i], expect.float(), atol=1e-5)


def test_an_oracle_denoiser_walks_the_process_back_to_z0():
    """Given the true z0 at every step, DDIM retraces the compression-aware trajectory exactly:
    each intermediate point is the forward process's point for the same draw of noise."""
    torch.manual_seed(2)
    z0, z_hat, eps = torch.randn(3, 1, 4, 8, 8).unbind(0)
    ac = alphas_cumprod()
    n_r = torch.tensor([400])
    z, _ = forward_process(z0, z_hat, n_r, n_r, eps, ac)
    for t, t_prev in [(400, 250), (250, 100), (100, 0)]:
        z = ddim_step(z, z0, t, t_prev, ac)
        if t_prev:
            expect, _ = forward_process(z0, z_hat, torch.tensor([t_prev]), n_r, eps, ac)
            assert torch.allclose(z, expect, atol=1e-4)
    assert torch.equal(z, z0)


def test_timesteps_and_rate_table():
    assert ddim_timesteps(800, 4) == [800, 600, 400, 200]
    assert ddim_timesteps(50, 4) == [50, 38, 25, 12]
    assert ddim_timesteps(3, 4) == [3, 2, 1]  # never a zero step, never repeated
    with pytest.raises(ValueError):
        ddim_timesteps(1000, 4)
    table = [n_r_for_level(level, 73) for level in range(73)]
    assert table[0] == 800 and table[-1] == 50 and table == sorted(table, reverse=True)
