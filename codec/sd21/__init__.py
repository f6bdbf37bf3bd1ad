"""The ``sd21`` preset: ResULIC's own model (Stable Diffusion 2.1-base, frozen, with a
ControlNet-XS branch fed by the decoded latent, and the project's latent codec on SD's
4-channel latent). Components come from paths or hub ids the user gives; nothing ships here."""
