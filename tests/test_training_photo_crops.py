"""Training photos in memory: downscaled once on load, cut into random flipped crops; and the same
photo as an image for the benchmarks that code held-out photos; the trainers' photo options."""

import argparse

import numpy as np
import pytest
import torch

from training.photo_crops import PhotoCrops, add_photo_arguments, load_photo, load_photo_image


def test_photos_load_at_most_the_long_side_and_as_the_same_image(train_photos):
    a = train_photos / "a.png"  # 256 x 192
    assert tuple(load_photo(a, 768).shape) == (3, 192, 256)  # never upscaled
    assert tuple(load_photo(a, 128).shape) == (3, 96, 128)
    assert tuple(load_photo(a, 128, 0.5).shape) == (3, 48, 64)
    img = load_photo_image(a, 128)
    assert img.size == (128, 96) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), load_photo(a, 128).permute(1, 2, 0).numpy())


def test_crops_come_from_every_photo_large_enough_and_repeat_for_a_seed(train_photos):
    crops = PhotoCrops([train_photos], crop=128, max_side=768, scales=[1.0, 0.65])
    assert len(crops) == 3  # both at full scale; at 0.65 only the 200 x 208 one keeps a 128-pixel short side (130)
    x = crops.batch(5)
    assert x.shape == (5, 3, 128, 128) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    again = PhotoCrops([train_photos], crop=128, max_side=768, scales=[1.0, 0.65])
    assert torch.equal(again.batch(5), x)


def test_missing_or_empty_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="training data folder not found"):
        PhotoCrops([tmp_path / "nope"], crop=128)
    with pytest.raises(ValueError, match="no photos"):
        PhotoCrops([tmp_path], crop=128)


def test_the_photo_options_build_the_crops_and_refuse_a_crop_off_the_grid(train_photos, capsys):
    p = argparse.ArgumentParser()
    add_photo_arguments(p)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(["--data", str(train_photos), "--crop", "128", "--scales", "1"])
    crops = PhotoCrops.from_args(args, torch.device("cpu"))
    assert crops.batch(2).shape == (2, 3, 128, 128)
    assert len(crops) == len(PhotoCrops([train_photos], crop=128, scales=[1.0]))
    for bad in ("100", "0"):
        with pytest.raises(SystemExit):
            p.parse_args(["--crop", bad])
        assert "multiple of 128" in capsys.readouterr().err
