"""Decode latency of the sd21 preset's diffusion decoder at full size, with random weights.

    python benchmarks/sd21_latency.py [--device cuda] [--dtype bf16] [--size 512] [--steps 4] [--repeats 5] [--tiny]

Builds Stable Diffusion 2.1-base's UNet, VAE and text encoder from their published
configurations (random weights: no download, and latency does not depend on the values) and a
ControlNet-XS adapter at 0.2 of the UNet's width, then times what decoding a stream costs after
entropy decoding: the prompt's embedding, ``--steps`` DDIM steps with classifier-free guidance
(two UNet evaluations each) and the VAE decode. The paper reports about 0.4 s on one consumer
GPU at 512×512. ``--tiny`` uses tiny configurations (the test's smoke run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codec.sd21.diffusion import SD21Diffusion  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(tiny: bool):
    """(vae, diffusion) with SD 2.1-base's configurations (or tiny ones), random weights."""
    from diffusers import AutoencoderKL, ControlNetXSAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=2, norm_num_groups=8,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                    attention_head_dim=4)  # fmt: skip
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4)  # fmt: skip
        text = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              max_position_embeddings=77, bos_token_id=1, eos_token_id=2, pad_token_id=2)  # fmt: skip
        ratio = 0.25
    else:  # stabilityai/stable-diffusion-2-1-base's published configurations
        unet = UNet2DConditionModel(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                                    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)  # fmt: skip
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512)  # fmt: skip
        text = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                              num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512)  # fmt: skip
        ratio = 0.2
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3, "photo": 4}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="</s>")
    adapter = ControlNetXSAdapter.from_unet(unet, size_ratio=ratio, conditioning_channels=4,
                                            conditioning_embedding_out_channels=(16,))  # fmt: skip
    return vae, SD21Diffusion(unet, adapter, CLIPTextModel(text), tokenizer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--n-r", type=int, default=400, help="start step (the paper's ~0.012 bpp point)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    dev, dtype = torch.device(args.device), DTYPES[args.dtype]
    t0 = time.perf_counter()
    vae, diffusion = build(args.tiny)
    vae, diffusion = vae.to(dev, dtype).eval(), diffusion.to(dev, dtype).eval()
    params = sum(p.numel() for p in diffusion.model.parameters())
    build_s = time.perf_counter() - t0
    z_hat = torch.randn(1, 4, args.size // 8, args.size // 8, device=dev, dtype=dtype)
    times = []
    for i in range(args.repeats + 1):  # the first is a warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            latent = diffusion.restore(z_hat, args.n_r, [i], args.steps, ["a photo"])
            image = vae.decode(latent / vae.config.scaling_factor).sample
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t)
    print(f"sd21 decoder ({'tiny' if args.tiny else 'SD 2.1-base size'}, random weights): UNet+adapter "
          f"{params / 1e6:.1f} M parameters, built in {build_s:.1f} s")  # fmt: skip
    print("| device | dtype | size | steps | UNet evaluations | median s | min s |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'} | {args.dtype} | {args.size} | {args.steps} | "
          f"{2 * args.steps} | {statistics.median(times):.3f} | {min(times):.3f} |")  # fmt: skip
    assert image.shape[-1] == args.size
    return 0


if __name__ == "__main__":
    sys.exit(main())
