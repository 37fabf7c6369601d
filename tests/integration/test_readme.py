"""The Python blocks of the README and the user guide run as written, on the data `make demo` writes."""

import os
import re
from pathlib import Path

import pytest

from patchcore.data.offline import build_offline_benchmarks
from tests.helpers import REPO_ROOT

README = REPO_ROOT / "README.md"
GUIDE = REPO_ROOT / "docs" / "guide"


def python_blocks(pages: list[Path] | None = None) -> list[str]:
    """Every Python block, the README's first, then the guide's pages in name order (they may use its `model`)."""
    pages = pages or [README, *sorted(GUIDE.glob("*.md"))]
    return [block for page in pages
            for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.DOTALL)]


def test_the_readme_has_python_examples() -> None:
    assert "from patchcore import PatchCore" in python_blocks([README])[0]
    assert len(python_blocks()) >= 2  # the guide's too


def test_the_readme_stays_a_front_page_and_links_every_guide_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for page in sorted(GUIDE.glob("*.md")):
        assert f"docs/guide/{page.name}" in text or page.name == "README.md", page.name
    for page in sorted(GUIDE.glob("*.md")):  # every relative link on a guide page leads to a file
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name}: {target}"


@pytest.mark.slow
def test_the_readme_python_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    build_offline_benchmarks(tmp_path / "demo_output" / "data", ("gravel",))  # what `make demo` leaves
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, "README or docs/guide", "exec"), namespace)  # noqa: S102 - our own docs
    printed = capsys.readouterr().out
    # The highest-scored test image is one with a synthetic defect, printed with its decision and map size.
    assert re.search(r"demo_output/data/gravel/test/(?!good/)\w+/\d+\.png [\d.]+ defect \(128, 128\)", printed), printed
    assert (tmp_path / "models" / "gravel" / "manifest.json").is_file()
    assert namespace["unfitted_copy"].get_params()["index"].n_probe == 4
    assert os.path.exists(namespace["worst"].source)
