"""Compression-aware diffusion (CDM): few-step generative decoding from the compressed latent.

``process`` holds the noise schedule, the compression-aware forward process and the rate -> N_r
table; ``model`` the denoiser (a diffusers UNet conditioned on the decoded latent and the rate);
``sampler`` the decoder that runs it.
"""
