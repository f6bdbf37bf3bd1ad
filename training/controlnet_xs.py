"""Training a ControlNet-XS adapter as diffusers' own ``ControlNetXSAdapter``.

diffusers runs an adapter only inside ``UNetControlNetXSModel.from_unet(unet, adapter)``, which
copies the adapter's weights into new modules and offers no way back. Here the combined model's
control tensors are made the adapter's own parameters (shared, not copied), so that training the
combined model trains the adapter, and ``adapter.save_pretrained`` writes a folder any diffusers
user loads. Which combined tensor is which adapter tensor is read off once from a probe: an
adapter whose every tensor holds its own index is combined, and each index is found where it
lands (diffusers' block builders copy tensors whole, never split or merge them).
"""

from __future__ import annotations

import torch

PROBE_OFFSET = 1000.5  # probe values: index + this, nothing a base UNet tensor holds


def adapter_tensor_map(unet, adapter) -> dict[str, str]:
    """{combined model tensor name: adapter tensor name} for every control tensor."""
    from diffusers import ControlNetXSAdapter, UNetControlNetXSModel

    probe = ControlNetXSAdapter.from_config(adapter.config)
    names = list(probe.state_dict())
    with torch.no_grad():
        for i, t in enumerate(probe.state_dict().values()):
            if t.is_floating_point():
                t.fill_(i + PROBE_OFFSET)
    combined = UNetControlNetXSModel.from_unet(unet, probe)
    base = set(unet.state_dict())
    found: dict[str, str] = {}
    for name, t in combined.state_dict().items():
        if not t.is_floating_point() or t.numel() == 0 or name in base:
            continue
        v = float(t.reshape(-1)[0])
        i = round(v - PROBE_OFFSET)
        if 0 <= i < len(names) and v == i + PROBE_OFFSET and bool((t == v).all()):
            found[name] = names[i]
    wanted = {n for n, t in probe.state_dict().items() if t.is_floating_point()}
    missing = wanted - set(found.values())
    if missing:  # a diffusers change that splits or merges tensors: fail rather than train half an adapter
        raise RuntimeError(f"could not place adapter tensors in the combined model: {sorted(missing)[:5]}")
    return found


def combine_sharing(unet, adapter):
    """``UNetControlNetXSModel`` whose control parameters are ``adapter``'s own (the base UNet's
    frozen): an optimiser over ``adapter.parameters()`` trains what the combined model runs."""
    from diffusers import UNetControlNetXSModel

    mapping = adapter_tensor_map(unet, adapter)
    combined = UNetControlNetXSModel.from_unet(unet, adapter)
    combined.freeze_unet_params()
    adapter_params = dict(adapter.named_parameters())
    for combined_name, adapter_name in mapping.items():
        owner, _, leaf = combined_name.rpartition(".")
        module = combined.get_submodule(owner)
        if adapter_name in adapter_params and isinstance(getattr(module, leaf), torch.nn.Parameter):
            setattr(module, leaf, adapter_params[adapter_name])
    return combined


__all__ = ["adapter_tensor_map", "combine_sharing"]
