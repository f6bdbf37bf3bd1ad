"""CDM decoding: noise ẑ to N_r with the stream's seed, then a few deterministic DDIM steps.

The noise comes from a CPU generator seeded by the stream, whatever device runs the model, so a
stream always starts from the same point; what may differ across hardware is only the float
arithmetic of the UNet (see schemas/bitstream_v1.md).
"""

from __future__ import annotations

import torch

from codec.cdm.model import CDMDenoiser
from codec.cdm.process import alphas_cumprod, ddim_step, ddim_timesteps, start_point

DEFAULT_STEPS = 4  # denoiser evaluations, the paper's setting


def stream_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """One standard normal draw per item, from its own seed (CPU generator: device-independent)."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s))
        out.append(torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(out)


def denoise(
    model: CDMDenoiser,
    z_hat: torch.Tensor,
    level: int,
    n_r: int,
    noise: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    text: torch.Tensor | None = None,
    uncond_text: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """The DDIM chain from ẑ noised to N_r (differentiable: prompt optimisation runs through it)."""
    ac = alphas_cumprod()
    dev = z_hat.device
    zh = model.normalise(z_hat)
    z = start_point(zh, n_r, noise.to(dev), ac)
    labels = torch.full((z.shape[0],), level, dtype=torch.long, device=dev)
    ts = ddim_timesteps(n_r, steps)
    for i, t in enumerate(ts):
        tt = torch.full((z.shape[0],), t, dtype=torch.long, device=dev)
        z0 = model(z, tt, zh, labels, text)
        if text is not None and uncond_text is not None and guidance_scale != 1.0:
            z0_u = model(z, tt, zh, labels, uncond_text)
            z0 = z0_u + guidance_scale * (z0 - z0_u)
        z = ddim_step(z, z0, t, ts[i + 1] if i + 1 < len(ts) else 0, ac)
    s = model.blend_for(level)
    return model.denormalise(z if s == 1.0 else zh + s * (z - zh))


@torch.no_grad()
def cdm_decode_latent(
    model: CDMDenoiser,
    z_hat: torch.Tensor,
    level: int,
    n_r: int,
    seeds: list[int],
    steps: int = DEFAULT_STEPS,
    texts: list[str] | None = None,
    guidance: float | None = None,
) -> torch.Tensor:
    """(B, C, h, w) decoded latents -> restored latents, all items at one rate level and N_r; a
    text-conditioned model is guided by each item's residual text (classifier-free guidance at
    ``guidance``, or the model's own scale)."""
    noise = stream_noise(tuple(z_hat.shape[1:]), seeds)
    if not model.text_conditioned:
        return denoise(model, z_hat, level, n_r, noise, steps)
    enc = model.text_encoder
    texts = texts or [""] * z_hat.shape[0]
    text, uncond = enc.embed(texts), enc.embed([""] * len(texts))
    return denoise(model, z_hat, level, n_r, noise, steps, text, uncond,
                   model.config.guidance_scale if guidance is None else guidance)  # fmt: skip
