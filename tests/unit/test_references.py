"""Why a region: each names the good training patch nearest to its worst patch, found through the bank rows' images
and grid positions, kept across saving and loading and after suspicious images leave the bank."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore import PatchCore
from patchcore.core.bank import MemoryBank, TrainingPatches
from patchcore.core.references import TrainingImages, patch_crops
from patchcore.data.offline import texture_photo
from tests.helpers import gravel_tiles, paste_defect

# Where brick is pasted on training tile 09: the only brick the memory bank has seen.
TEACHER, BRICK_BOX = 9, (70, 20, 94, 44)


@pytest.fixture(scope="module")
def brick_taught(tmp_path_factory) -> tuple[PatchCore, list[Path], np.ndarray]:
    """A model of 16 gravel tiles (one with a small brick square), and a good tile with a larger brick square."""
    train, good = gravel_tiles()
    brick = texture_photo("brick")[100:200, 100:200]
    folder = tmp_path_factory.mktemp("gravel")
    files = []
    for number, tile in enumerate(train):
        if number == TEACHER:
            tile = paste_defect(tile, BRICK_BOX[1], BRICK_BOX[0], BRICK_BOX[2] - BRICK_BOX[0], brick)
        files.append(folder / f"{number:02d}.png")
        Image.fromarray(tile).save(files[-1])
    model = PatchCore(index="exact", progress=False).fit(files)
    return model, files, paste_defect(good[0], 30, 30, 40, brick)


def _feature_at(model: PatchCore, image, bbox: tuple[int, int, int, int]) -> np.ndarray:
    """The patch feature of the grid cell at the centre of `bbox` (an untiled image: features in raster order)."""
    picture = image if isinstance(image, Image.Image) else Image.open(image)
    preprocessor = model.preprocessor_
    grid = preprocessor.grid_size(preprocessor.network_size(picture.size))
    centres_x, centres_y = preprocessor.cell_centres(picture.size, grid)
    row = int(np.argmin(np.abs(centres_y - (bbox[1] + bbox[3]) / 2)))
    column = int(np.argmin(np.abs(centres_x - (bbox[0] + bbox[2]) / 2)))
    return model.patch_features(picture).reshape(*grid, -1)[row, column]


def test_a_brick_region_is_explained_by_the_one_brick_patch_of_the_training_set(brick_taught) -> None:
    model, files, test = brick_taught
    regions = model.predict([Image.fromarray(test)])[0].regions
    assert regions, "the brick square is a defect on gravel"
    x0, y0, x1, y1 = BRICK_BOX
    for region in regions:
        good = region.nearest_good
        assert good.image == str(files[TEACHER])
        assert good.bbox[0] < x1 and good.bbox[2] > x0 and good.bbox[1] < y1 and good.bbox[3] > y0  # on the brick
        # The named patch is a bank row, and its distance to the region's worst patch is the one reported.
        reference = _feature_at(model, good.image, good.bbox)
        assert np.linalg.norm(model.memory_bank_ - reference, axis=1).min() < 1e-4
        worst = _feature_at(model, Image.fromarray(test), good.patch_bbox)
        assert np.linalg.norm(worst - reference) == pytest.approx(good.distance, rel=1e-3)
        assert region.bbox[0] - 20 <= good.patch_bbox[0] and good.patch_bbox[2] <= region.bbox[2] + 20


def test_the_good_patch_survives_saving_and_is_shown_beside_the_region(brick_taught, tmp_path: Path) -> None:
    model, files, test = brick_taught
    before = model.predict([Image.fromarray(test)])[0].regions
    loaded = PatchCore.load(model.save(tmp_path / "model"))
    after = loaded.predict([Image.fromarray(test)])[0].regions
    assert [region.nearest_good for region in after] == [region.nearest_good for region in before]
    (query, query_box), (reference, reference_box) = patch_crops(Image.fromarray(test), after[0].nearest_good)
    # Each crop holds its patch's box with as much again around it, within the image.
    assert query_box[2] - query_box[0] == after[0].nearest_good.patch_bbox[2] - after[0].nearest_good.patch_bbox[0]
    assert reference.size[0] >= 2 * (reference_box[2] - reference_box[0]) - 1
    # A training image that is gone is no picture, but the region still names it.
    files[TEACHER].rename(tmp_path / "moved.png")
    try:
        assert patch_crops(Image.fromarray(test), after[0].nearest_good)[1] is None
    finally:
        (tmp_path / "moved.png").rename(files[TEACHER])


def test_leaving_images_out_keeps_rows_and_names_in_step() -> None:
    patches = TrainingPatches(np.arange(10, dtype=np.float32)[:, None], np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]),
                              np.arange(20, dtype=np.int32).reshape(10, 2), [(10, 10)] * 5)
    images = TrainingImages(tuple("abcde"), ((10, 10),) * 5)
    bank = patches.bank(np.array([1, 4, 6, 9])).without_image_numbers(np.array([1, 3]))
    kept = images.without(np.array([1, 3]))
    assert [kept.names[origin] for origin in bank.origins] == ["a", "c", "e"]  # rows 1, 4 and 9 stay
    np.testing.assert_array_equal(bank.positions, [[2, 3], [8, 9], [18, 19]])
    more = bank.extended(patches.without_images(np.array([1, 3])).bank(np.array([2]), first=len(kept)))
    assert more.origins.tolist() == [0, 1, 2, 4] and more.positions[-1].tolist() == [8, 9]
    # A model saved before names were kept: images numbered before an update stay nameless.
    assert TrainingImages().extended(["f"], [(4, 4)], first=3).names == ("", "", "", "f")
    assert MemoryBank(np.zeros((1, 1), np.float32), np.zeros(1, np.int64)).positions is None
