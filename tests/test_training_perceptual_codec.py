"""A real (tiny) run of the perceptual codec trainer on CPU, adversarial term on and its own λs: two steps,
checkpoint, resume, exports that load as a latent codec and a TAEF2 decoder; the decoder alone (--freeze-codec)."""

import json
from pathlib import Path

import pytest
import torch

from codec.autoencoder import TAEF2
from codec.latent_codec import LEVELS_PER_POINT
from codec.presets import load_latent_codec
from training.perceptual_codec import main

PERCEPTUAL = Path(__file__).resolve().parents[2] / "shared" / "weights" / "perceptual"


def test_train_resume_and_export(tmp_path, train_photos):
    data = train_photos
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--batch", "2", "--crop", "128", "--scales", "1",
            "--save-every", "100", "--log-every", "1", "--device", "cpu", "--metric-weights", str(PERCEPTUAL),
            "--adversarial-weight", "0.001", "--lambdas", "1e-7", "1e-6", "1e-5"]  # fmt: skip
    main([*args, "--steps", "2"])
    main([*args, "--steps", "3"])  # resumes at step 2
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3 and "disc" in ckpt  # the discriminator resumes too
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["lpips"] > 0 and r["bpp"] > 0 and r["psnr"] > 5 and r["adv"] > 0 and r["d_loss"] > 0 for r in log)
    codec = load_latent_codec(out / "latent_codec.safetensors")
    assert codec.config.transform == "conv" and codec.config.lambdas == [1e-7, 1e-6, 1e-5]
    assert codec.num_levels == 2 * LEVELS_PER_POINT + 1
    TAEF2.from_pretrained().with_decoder(out / "decoder.safetensors")  # the same network, key for key


@pytest.mark.slow  # a real training step of the full-size codec: 17 s on 2 cores
def test_init_from_a_release_starts_at_its_weights(tmp_path, train_photos):
    from codec.presets import WEIGHTS_DIR, release

    entry = release("taef2", "8147641cb2d9cfd8")
    out = tmp_path / "run"
    main(["--data", str(train_photos), "--out", str(out), "--batch", "1", "--crop", "128", "--scales", "1",
          "--steps", "1", "--device", "cpu", "--metric-weights", str(PERCEPTUAL), "--init-from", "8147641cb2d9cfd8",
          "--lr", "1e-12", "--decoder-lr", "1e-12"])  # fmt: skip
    codec, start = load_latent_codec(out / "latent_codec.safetensors"), load_latent_codec(WEIGHTS_DIR / entry["latent_codec"])
    assert codec.config == start.config
    own = dict(start.named_parameters())  # the quantiles' aux step has its own learning rate: left out
    assert all(torch.allclose(v, own[k], atol=1e-4) for k, v in codec.named_parameters() if not k.endswith("quantiles"))
    ae = TAEF2.from_pretrained()
    tuned, own = (ae.with_decoder(f).decoder.state_dict() for f in (out / "decoder.safetensors", WEIGHTS_DIR / entry["decoder"]))
    assert all(torch.allclose(tuned[k], own[k], atol=1e-6) for k in own)


def test_init_from_needs_a_release_with_its_own_decoder(tmp_path, train_photos):
    with pytest.raises(SystemExit, match="no decoder of its own"):
        main(["--data", str(train_photos), "--out", str(tmp_path / "run"), "--init-from", "75b3a217d25759b2",
              "--crop", "128", "--device", "cpu", "--metric-weights", str(PERCEPTUAL)])  # fmt: skip


def test_freeze_codec_trains_the_decoder_alone_and_keeps_the_release_codec_file(tmp_path, train_photos):
    import hashlib

    from codec.presets import WEIGHTS_DIR, release

    entry = release("taef2", "8147641cb2d9cfd8")
    out = tmp_path / "run"
    args = ["--data", str(train_photos), "--out", str(out), "--batch", "1", "--crop", "128", "--scales", "1",
            "--device", "cpu", "--metric-weights", str(PERCEPTUAL), "--init-from", "8147641cb2d9cfd8",
            "--freeze-codec", "--decoder-lr", "1e-3", "--log-every", "1"]  # fmt: skip
    main([*args, "--steps", "1"])
    main([*args, "--steps", "2"])  # resumes at step 1
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and "codec" not in ckpt and "aux_opt" not in ckpt
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(out / "latent_codec.safetensors") == digest(WEIGHTS_DIR / entry["latent_codec"])
    ae = TAEF2.from_pretrained()
    files = (out / "decoder.safetensors", WEIGHTS_DIR / entry["decoder"])
    tuned, own = (ae.with_decoder(f).decoder.state_dict() for f in files)
    assert any(not torch.equal(tuned[k], own[k]) for k in own)  # the decoder moved
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all("aux" not in r and r["lpips"] > 0 for r in log)
    with pytest.raises(SystemExit, match="made with --freeze-codec"):
        main([a for a in args if a != "--freeze-codec"] + ["--steps", "3"])
    with pytest.raises(SystemExit, match="needs --init-from"):
        main(["--data", str(train_photos), "--out", str(tmp_path / "x"), "--freeze-codec", "--device", "cpu"])
    with pytest.raises(SystemExit, match="cannot go with --freeze-codec"):
        main([*args, "--lambdas", "1e-7", "1e-6"])
