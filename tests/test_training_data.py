"""The latent cache: each run's data is its own folders' photos, never an evaluation set."""

from pathlib import Path

import pytest

from codec.autoencoder import TAEF2
from evaluation.heldout import HeldOutImageError
from tests.conftest import KODAK, photo
from training.data import build_cache, cache_from_specs, training_folder
from training.runtime import positive_float, positive_int


@pytest.fixture(scope="module")
def ae() -> TAEF2:
    return TAEF2.from_pretrained()


def _folder(root: Path, names: dict[str, str]) -> Path:
    for rel, source in names.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        photo(64, 64, source).save(root / rel)
    return root


def test_a_run_gets_its_own_folders_entries_only(tmp_path, ae):
    held_out = _folder(tmp_path / "held", {"x.png": "kodim05.png"})
    train = _folder(tmp_path / "train", {"a.png": "kodim23.png", "sub/a.png": "kodim03.png"})
    cache = tmp_path / "cache"
    build_cache([held_out], cache, ae, scales=(1.0,))  # a calibration's photos, in the shared cache
    files = cache_from_specs([f"{train}:1.0"], cache, ae)
    assert len(files) == 2 and all(f.name.startswith("train-a-") for f in files)  # a.png and sub/a.png apart
    assert len(list(cache.glob("*.safetensors"))) == 3 and not list(cache.glob(".*"))
    (train / "a.png").write_bytes((held_out / "x.png").read_bytes())  # an edited photo: a new entry
    again = cache_from_specs([f"{train}:1.0"], cache, ae)
    assert len(set(again) - set(files)) == 1


def test_missing_empty_and_evaluation_folders_are_refused(tmp_path):
    from PIL import Image

    with pytest.raises(FileNotFoundError, match="not found"):
        training_folder(tmp_path / "typo")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos in"):
        training_folder(tmp_path / "empty")
    named = _folder(tmp_path / "home" / "kodak" / "photos", {"k.png": "kodim23.png"})  # a crop, and a name
    assert training_folder(named) == named  # neither is an evaluation image
    renamed = tmp_path / "holiday"
    renamed.mkdir()
    with Image.open(KODAK / "kodim23.png") as img:
        img.resize((384, 256)).transpose(Image.Transpose.ROTATE_90).save(renamed / "IMG_0001.jpg", quality=50)
    with pytest.raises(HeldOutImageError, match="IMG_0001.jpg is evaluation image kodak/kodim23"):
        training_folder(renamed)
    with pytest.raises(HeldOutImageError):  # what the trainers and calibrations read their photos through
        cache_from_specs([f"{renamed}:1.0"], tmp_path / "cache", None)


def test_cadences_and_counts_must_be_positive():
    assert positive_int("3") == 3 and positive_float("0.5") == 0.5
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(Exception, match="must be a whole number >= 1"):
            positive_int(bad)
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(Exception, match="must be a number > 0"):
            positive_float(bad)


def test_calibrators_find_the_release_a_model_was_trained_for(tmp_path):
    import torch
    from safetensors.torch import save_file

    from training.data import trained_for

    save_file(
        {"w": torch.zeros(1)}, str(tmp_path / "a.safetensors"), metadata={"latent_codec_model_id": "e102cc3de58bc279"}
    )
    save_file({"w": torch.zeros(1)}, str(tmp_path / "b.safetensors"))
    assert trained_for(tmp_path / "a.safetensors") == "e102cc3de58bc279"
    assert trained_for(tmp_path / "b.safetensors") is None  # no record: the newest release
