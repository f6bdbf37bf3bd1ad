"""Tiny ``sd21`` components built from configs (random weights), saved the way real ones ship: a
Stable Diffusion folder in diffusers' layout, a ControlNet-XS adapter folder and a latent codec
file for the 4-channel latent. No weights are downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a red green blue white door boat sky sea house tree stone wooden bright dark".split()


def make_tiny_sd21(root: Path, seed: int = 0) -> dict[str, Path]:
    """{"sd": folder, "controlnet": folder, "latent_codec": file} under ``root``."""
    from diffusers import AutoencoderKL, ControlNetXSAdapter, DDIMScheduler, UNet2DConditionModel
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from codec.latent_codec import LatentCodec, LatentCodecConfig
    from training.latent_codec import save_weights

    torch.manual_seed(seed)
    sd = root / "sd21"
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                        sample_size=64)  # fmt: skip
    vae.save_pretrained(sd / "vae")
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=2,
                                norm_num_groups=8, cross_attention_dim=16, attention_head_dim=4)  # fmt: skip
    unet.save_pretrained(sd / "unet")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(sd / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=3))  # fmt: skip
    text.save_pretrained(sd / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, prediction_type="epsilon").save_pretrained(sd / "scheduler")  # fmt: skip
    adapter = ControlNetXSAdapter.from_unet(unet, size_ratio=0.25, conditioning_channels=4,
                                            conditioning_embedding_out_channels=(8,))  # fmt: skip
    for p in adapter.parameters():  # a fresh adapter's zero convolutions leave the UNet alone
        torch.nn.init.normal_(p, std=0.05)
    adapter.save_pretrained(root / "controlnet")
    lc = LatentCodec(LatentCodecConfig(latent_channels=4, hidden=16, y_channels=16, z_channels=8, slices=[8, 8],
                                       param_hidden=16, refine_hidden=8))  # fmt: skip
    save_weights(lc, root / "latent_codec.safetensors", {})
    return {"sd": sd, "controlnet": root / "controlnet", "latent_codec": root / "latent_codec.safetensors"}
