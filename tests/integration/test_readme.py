"""The README's Python blocks run as written, on the data `make demo` writes."""

import os
import re
from pathlib import Path

import pytest

from patchcore.data.offline import build_offline_benchmarks
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_readme_has_python_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 2 and "from patchcore import PatchCore" in blocks[0]


@pytest.mark.slow
def test_the_readme_python_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    build_offline_benchmarks(tmp_path / "demo_output" / "data", ("gravel",))  # what `make demo` leaves
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    printed = capsys.readouterr().out
    # The highest-scored test image is one with a synthetic defect, printed with its decision and map size.
    assert re.search(r"demo_output/data/gravel/test/(?!good/)\w+/\d+\.png [\d.]+ defect \(128, 128\)", printed), printed
    assert (tmp_path / "models" / "gravel" / "manifest.json").is_file()
    assert namespace["unfitted_copy"].get_params()["index"].n_probe == 4
    assert os.path.exists(namespace["worst"].source)
