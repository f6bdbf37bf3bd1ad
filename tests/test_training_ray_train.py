"""Ray Train's data: photos read where they lie, and never an evaluation image."""

import pytest
from PIL import Image

from tests.conftest import KODAK, ROOT
from training.ray_train import crops_dataset

pytestmark = pytest.mark.timeout(300)


def test_crops_come_from_the_photos_and_an_evaluation_image_fails_the_run(ray_local, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, f in enumerate(sorted((ROOT.parent / "shared" / "datasets" / "photos-train").glob("*.png"))[:2]):
        with Image.open(f) as im:
            im.convert("RGB").resize((160, 120)).save(photos / f"p{i}.png")
    rows = crops_dataset(str(photos), 64, {"p0.png": "a red door"}).take_all()
    assert sorted(r["caption"] for r in rows) == ["", "a red door"] and all(r["image"].shape == (64, 64, 3) for r in rows)
    with Image.open(KODAK / "kodim23.png") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "IMG_0002.jpg", quality=60)  # renamed, mirrored
    with pytest.raises(Exception, match="IMG_0002.jpg is evaluation image kodak/kodim23"):
        crops_dataset(str(photos), 64).take_all()
