"""The conditional PatchGAN scores patches, depends on the latent it is given, and passes
gradients to the image (what the decoder's adversarial term needs)."""

import torch

from training.discriminator import PatchDiscriminator


def test_patch_logits_depend_on_image_and_latent():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    image = torch.rand(2, 3, 128, 128, requires_grad=True)
    latent = torch.randn(2, 32, 16, 16)
    logits = disc(image, latent)
    assert logits.shape == (2, 1, 14, 14)  # overlapping patches, not one score per image
    assert not torch.allclose(logits, disc(image, latent + 1.0))
    logits.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_adversarial_term_trains_only_its_discriminator_in_its_own_step():
    from training.discriminator import AdversarialTerm

    torch.manual_seed(0)
    term = AdversarialTerm(lr=1e-3)
    real, latent = torch.rand(2, 3, 64, 64), torch.randn(2, 32, 8, 8)
    fake = torch.rand(2, 3, 64, 64, requires_grad=True)
    before = {k: v.clone() for k, v in term.disc.state_dict().items()}
    stats = term.train_step(real, fake, latent)
    assert set(stats) == {"d_loss", "d_real", "d_fake"} and stats["d_loss"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in term.disc.state_dict().items())
    assert fake.grad is None  # the discriminator's step does not reach the decoder
    grads = [p.grad.clone() for p in term.disc.parameters()]
    loss = term.generator_loss(fake, latent)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert fake.grad.abs().sum() > 0
    assert all(torch.equal(p.grad, g) for p, g in zip(term.disc.parameters(), grads))  # the decoder's pass adds none
    restored = AdversarialTerm()
    restored.load_state_dict(term.state_dict())
    assert all(torch.equal(v, term.disc.state_dict()[k]) for k, v in restored.disc.state_dict().items())
