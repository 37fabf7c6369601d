"""Output names: one per input, never shared, so no heatmap or scores row overwrites another's."""

from pathlib import Path

from patchcore.io.files import output_names


def test_names_keep_folders_and_drop_extensions_unless_they_tell_inputs_apart(tmp_path: Path) -> None:
    files = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "b" / "y_16bit.png",
             tmp_path / "b" / "y_16bit.TIF", tmp_path / "b" / "z.png"]
    assert output_names(files) == ["a__x", "b__x", "b__y_16bit_png", "b__y_16bit_tif", "b__z"]


def test_names_that_still_meet_get_a_number(tmp_path: Path) -> None:
    # 'a/x.png' flattens to the name of the file 'a__x.png' beside it; X.png and x.png meet on macOS and Windows.
    files = [tmp_path / "a" / "x.png", tmp_path / "a__x.png", tmp_path / "X.png", tmp_path / "x.png"]
    names = output_names(files)
    assert names == ["a__x", "a__x_2", "X", "x_2"]
    assert len({name.lower() for name in names}) == len(files)
