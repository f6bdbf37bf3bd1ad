"""A tiny text-conditioned CDM with its own tiny CLIP text encoder, built from configs (random
weights, a word-level tokenizer trained on the fly), saved the way a real one ships."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "a red green blue white door boat sky sea house tree lighthouse stone wooden bright dark".split()


def make_tiny_text_cdm(path: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

    from codec.cdm.model import CDMConfig, CDMDenoiser

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=16, bos_token_id=1,
                                        eos_token_id=2, pad_token_id=3))  # fmt: skip
    text.save_pretrained(path / "text_encoder")
    fast.save_pretrained(path / "text_encoder")
    cdm = CDMDenoiser(CDMConfig(block_out_channels=(32, 32), norm_num_groups=8, text_dim=16, text_encoder="text_encoder"))
    torch.nn.init.normal_(cdm.unet.conv_out.weight, std=0.02)  # a fresh model's is zero (it ignores the text)
    cdm.save_pretrained(path)
    return path
