"""Each dataset layout read from a small tree built as its dataset publishes it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchcore.data.categories import load_mask
from patchcore.data.layouts import find_categories, load_dataset
from patchcore.errors import DatasetError
from patchcore.io.images import collect_images


def image(path: Path, size: tuple[int, int] = (24, 16), value: int = 0, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def mask(path: Path, value: int = 255, size: tuple[int, int] = (24, 16)) -> Path:
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[4:8, 4:8] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def names(paths) -> list[str]:
    return sorted(f"{p.parent.name}/{p.name}" for p in paths)


@pytest.fixture()
def mvtec_ad2(tmp_path: Path) -> Path:
    can = tmp_path / "mvtec_ad_2" / "can"
    for i in range(3):
        image(can / "train" / "good" / f"{i:03d}_regular.png")
    image(can / "validation" / "good" / "000_regular.png")
    image(can / "test_public" / "good" / "000_regular.png")
    image(can / "test_public" / "bad" / "001_regular.png")
    mask(can / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png")
    image(can / "test_private" / "000_regular.png")
    image(can / "test_private_mixed" / "000_mixed.png")
    return tmp_path / "mvtec_ad_2"


def test_mvtec_ad2(mvtec_ad2: Path) -> None:
    layout, folders = find_categories(mvtec_ad2)
    assert layout == "mvtec_ad2" and [f.name for f in folders] == ["can"]
    [can] = load_dataset(mvtec_ad2)
    assert len(can.train_images) == 3 and names(can.validation_images) == ["good/000_regular.png"]
    assert [(s.image.name, s.defect_type, s.mask and s.mask.name) for s in can.test_samples] == [
        ("001_regular.png", "bad", "001_regular_mask.png"), ("000_regular.png", "good", None)]
    assert [(split, [p.name for p in images]) for split, images in can.unlabelled] == [
        ("test_private", ["000_regular.png"]), ("test_private_mixed", ["000_mixed.png"])]
    # Fitting the object's folder takes train/good only; the category folder alone is recognised too.
    assert names(collect_images(mvtec_ad2 / "can", training=True)) == [f"good/{i:03d}_regular.png" for i in range(3)]
    assert find_categories(mvtec_ad2 / "can")[0] == "mvtec_ad2"
    # Predicting the folder scores its test images, labelled and not: never train/ or validation/, never masks.
    assert names(collect_images(mvtec_ad2 / "can")) == ["bad/001_regular.png", "good/000_regular.png",
                                                        "test_private/000_regular.png",
                                                        "test_private_mixed/000_mixed.png"]
    (mvtec_ad2 / "can" / "test_public" / "ground_truth" / "bad" / "001_regular_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"bad/001_regular.png: its ground-truth mask .*001_regular_mask.png is "
                                           "missing"):
        load_dataset(mvtec_ad2)


@pytest.fixture()
def visa(tmp_path: Path) -> Path:
    root = tmp_path / "VisA"
    rows = ["object,split,label,image,mask"]
    for i in range(4):
        image(root / "candle" / "Data" / "Images" / "Normal" / f"{i:04d}.JPG", value=10)
        rows.append(f"candle,{'train' if i < 3 else 'test'},normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(2):
        image(root / "candle" / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG", value=200)
        mask(root / "candle" / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", value=1)  # class numbers, not 255
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,candle/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa(visa: Path) -> None:
    assert find_categories(visa) == ("visa", [visa / "candle"])
    [candle] = load_dataset(visa)
    assert names(candle.train_images) == [f"Normal/{i:04d}.JPG" for i in range(3)]
    assert [(s.image.name, s.is_anomalous) for s in candle.test_samples] == [
        ("0003.JPG", False), ("000.JPG", True), ("001.JPG", True)]
    # A mask of 0/1 values: every non-zero pixel is defect.
    sample = candle.test_samples[1]
    assert load_mask(sample.mask, (24, 16), candle.mask_threshold).sum() == 16
    # fit on the object folder: the split file's normal training images, never the anomalies or masks.
    assert names(collect_images(visa / "candle", training=True)) == [f"Normal/{i:04d}.JPG" for i in range(3)]
    with pytest.raises(DatasetError, match=r"VisA dataset of 1 categories \(candle\): fit one category's folder"):
        collect_images(visa, training=True)


def test_visa_errors_name_the_line_and_the_file(visa: Path) -> None:
    split_file = visa / "split_csv" / "1cls.csv"
    (visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(DatasetError, match=r"1cls.csv line 7: mask .*Masks/Anomaly/001.png not found"):
        load_dataset(visa)
    split_file.write_text(split_file.read_text().replace("candle,test,anomaly", "candle,train,anomaly", 1))
    with pytest.raises(DatasetError, match=r"1cls.csv line 6: an anomalous image in the train split"):
        collect_images(visa / "candle", training=True)


def test_mvtec_loco_merges_the_masks_of_each_image(tmp_path: Path) -> None:
    box = tmp_path / "loco" / "breakfast_box"
    image(box / "train" / "good" / "000.png")
    image(box / "validation" / "good" / "000.png")
    image(box / "test" / "good" / "000.png")
    image(box / "test" / "logical_anomalies" / "000.png")
    image(box / "test" / "structural_anomalies" / "000.png")
    mask(box / "ground_truth" / "logical_anomalies" / "000" / "000.png", value=1)
    second = np.zeros((16, 24), dtype=np.uint8)
    second[10:12, 10:20] = 240
    Image.fromarray(second).save(box / "ground_truth" / "logical_anomalies" / "000" / "001.png")
    mask(box / "ground_truth" / "structural_anomalies" / "000" / "000.png")
    [category] = load_dataset(tmp_path / "loco")
    assert category.layout == "mvtec_loco" and len(category.validation_images) == 1
    logical = next(s for s in category.test_samples if s.defect_type == "logical_anomalies")
    assert load_mask(logical.mask, (24, 16), category.mask_threshold).sum() == 16 + 20


def test_btad_and_mpdd(tmp_path: Path) -> None:
    product = tmp_path / "BTech_Dataset_transformed" / "03"
    image(product / "train" / "ok" / "0000.bmp")
    image(product / "test" / "ok" / "0000.bmp")
    image(product / "test" / "ko" / "0001.bmp")
    mask(product / "ground_truth" / "ko" / "0001.png")
    [category] = load_dataset(product.parent)
    assert category.layout == "btad" and names(category.train_images) == ["ok/0000.bmp"]
    assert [(s.defect_type, s.mask and s.mask.name) for s in category.test_samples] == [("ko", "0001.png"),
                                                                                        ("good", None)]
    # MPDD is MVTec AD's layout.
    bracket = tmp_path / "MPDD" / "bracket_black"
    image(bracket / "train" / "good" / "000.png")
    image(bracket / "test" / "good" / "000.png")
    image(bracket / "test" / "hole" / "000.png")
    mask(bracket / "ground_truth" / "hole" / "000_mask.png")
    assert find_categories(tmp_path / "MPDD")[0] == "mvtec"


def test_kolektorsdd2_never_trains_on_its_defective_training_images(tmp_path: Path) -> None:
    root = tmp_path / "KolektorSDD2"
    for split, stems in (("train", ("10000", "10001", "10002")), ("test", ("20000", "20001"))):
        for stem in stems:
            image(root / split / f"{stem}.png")
            defective = stem in ("10001", "20001")
            mask(root / split / f"{stem}_GT.png", value=255 if defective else 0)
    [category] = load_dataset(root)
    assert category.layout == "kolektorsdd2"
    assert names(category.train_images) == ["train/10000.png", "train/10002.png"]
    assert names(collect_images(root, training=True)) == ["train/10000.png", "train/10002.png"]
    assert names(collect_images(root)) == ["test/20000.png", "test/20001.png"]  # never the _GT masks
    assert [(s.image.name, s.is_anomalous, s.mask and s.mask.name) for s in category.test_samples] == [
        ("20000.png", False, None), ("20001.png", True, "20001_GT.png")]
    (root / "test" / "20000_GT.png").unlink()
    with pytest.raises(DatasetError, match=r"20000.png: its mask .*20000_GT.png is missing"):
        load_dataset(root)


def test_labelled_folder_by_names_and_by_options(tmp_path: Path) -> None:
    line = tmp_path / "line"
    for i in range(10):
        image(line / "good" / f"{i:02d}.png")
    image(line / "bad" / "scratch" / "a.png")
    image(line / "ng" / "b.png")
    mask(line / "masks" / "bad" / "scratch" / "a_mask.png")
    mask(line / "masks" / "b.png")
    [category] = load_dataset(line)
    assert category.layout == "folder"
    assert names(category.train_images) == [f"good/{i:02d}.png" for i in range(8)]  # the last 2 of 10 test
    assert sorted((s.image.name, s.defect_type, s.mask and s.mask.name) for s in category.test_samples) == [
        ("08.png", "good", None), ("09.png", "good", None), ("a.png", "bad", "a_mask.png"), ("b.png", "ng", "b.png")]
    # Options name the folders; a missing mask is named.
    (line / "masks" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"ng/b.png: no mask for it in .*masks"):
        load_dataset(line)
    [by_options] = load_dataset(line, good_dir="good", defect_dirs="bad", mask_dir="masks")
    assert [s.defect_type for s in by_options.test_samples] == ["good", "good", "bad"]
    with pytest.raises(DatasetError, match=r"line/rejects: not a folder"):
        load_dataset(line, defect_dirs="rejects")


def test_csv_manifest(tmp_path: Path) -> None:
    for i in range(5):
        image(tmp_path / "images" / f"g{i}.png")
    image(tmp_path / "images" / "d0.png")
    mask(tmp_path / "masks" / "d0.png")
    manifest = tmp_path / "line.csv"
    manifest.write_text("path,label,mask,split\n" + "".join(f"images/g{i}.png,good,,train\n" for i in range(3))
                        + "images/g3.png,good,,validation\nimages/g4.png,ok,,test\nimages/d0.png,bad,masks/d0.png,\n")
    assert find_categories(manifest) == ("csv", [manifest])
    [category] = load_dataset(manifest)
    assert category.name == "line" and len(category.train_images) == 3 and len(category.validation_images) == 1
    assert [(s.image.name, s.is_anomalous, s.mask and s.mask.name) for s in category.test_samples] == [
        ("g4.png", False, None), ("d0.png", True, "d0.png")]
    manifest.write_text("path,label\nimages/g0.png,good\nimages/missing.png,good\n")
    with pytest.raises(DatasetError, match=r"line.csv line 3: image .*images/missing.png not found"):
        load_dataset(manifest)
    manifest.write_text("path,label,split\nimages/d0.png,bad,train\n")
    with pytest.raises(DatasetError, match=r"line.csv line 2: a defective image in the train split"):
        load_dataset(manifest)
    manifest.write_text("path,label\nimages/g0.png,maybe\n")
    with pytest.raises(DatasetError, match=r"line.csv line 2: label 'maybe' is neither good"):
        load_dataset(manifest)


def test_unknown_layouts_and_names(tmp_path: Path, mvtec_ad2: Path) -> None:
    image(tmp_path / "plain" / "a.png")
    with pytest.raises(DatasetError, match=r"plain: no dataset layout recognised"):
        load_dataset(tmp_path / "plain")
    with pytest.raises(DatasetError, match=r"not in VisA layout \(neither one category nor a folder of them\)"):
        load_dataset(mvtec_ad2, layout_name="visa")
    with pytest.raises(DatasetError, match=r"no category fabric \(found: can\)"):
        load_dataset(mvtec_ad2, names=["fabric"])


def test_fitting_an_mvtec_ad2_object_takes_its_validation_images_for_the_threshold(mvtec_ad2: Path) -> None:
    from patchcore import PatchCore

    model = PatchCore(coreset_ratio=0.5).fit(mvtec_ad2 / "can")
    assert model.n_train_images_ == 3 and model.nominal_source_ == "validation images"
    assert len(model.nominal_scores_) == 1
