"""Training the adapter through the combined model: the two share their control tensors."""

from __future__ import annotations

import torch

from tests.tiny_sd21 import make_tiny_sd21
from training.controlnet_xs import adapter_tensor_map, combine_sharing


def test_training_the_combined_model_trains_the_adapter(tmp_path):
    from diffusers import ControlNetXSAdapter, UNet2DConditionModel, UNetControlNetXSModel

    parts = make_tiny_sd21(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(parts["sd"] / "unet")
    adapter = ControlNetXSAdapter.from_pretrained(parts["controlnet"])
    floats = {n for n, t in adapter.state_dict().items() if t.is_floating_point()}
    assert set(adapter_tensor_map(unet, adapter).values()) == floats  # every adapter tensor placed once
    combined = combine_sharing(unet, adapter)
    trainable = {id(p) for p in combined.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()}  # the base UNet frozen, the rest the adapter's own
    torch.manual_seed(0)
    x, text, t = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16), torch.tensor([100, 700])

    def run(model):
        return model(x, t, encoder_hidden_states=text, controlnet_cond=x).sample

    before = run(combined).detach()
    assert torch.equal(before, run(UNetControlNetXSModel.from_unet(unet, adapter)))
    opt = torch.optim.SGD(adapter.parameters(), lr=0.1)
    run(combined).pow(2).mean().backward()
    opt.step()
    after = run(combined).detach()
    assert not torch.allclose(before, after)
    adapter.save_pretrained(tmp_path / "trained")  # what training writes: a diffusers adapter folder
    reloaded = ControlNetXSAdapter.from_pretrained(tmp_path / "trained")
    assert torch.allclose(run(UNetControlNetXSModel.from_unet(unet, reloaded)), after, atol=1e-6)
