"""The web page in a real headless browser: upload a defective texture photo, see the decision and overlay."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("CI must install Debian's chromium for the browser test (see .ci/run)", pytrace=False)
if CHROMIUM is None:
    pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

from tests.helpers import serving  # noqa: E402
from patchcore import PatchCore  # noqa: E402
from patchcore.apps.service import create_app, load_models  # noqa: E402

# As the machine notes say: without these, Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server_url(image_folder, good_test_crops, tmp_path_factory):
    # Fitted from files, so that the page can show the good training patch nearest to a region; the threshold
    # from good crops of the test rows (the training rows' crops overlap each other and score low).
    model = PatchCore(coreset_ratio=0.1, batch_size=8, image_size=128).fit(image_folder,
                                                                           validation=good_test_crops[2:])
    model_dir = model.save(tmp_path_factory.mktemp("web") / "brick")
    with serving(create_app(load_models([str(model_dir)]))) as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.fixture()
def page(server_url):
    """The service's page in headless chromium, once its model list has loaded."""
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            opened = browser.new_page()
            opened.goto(server_url)
            opened.wait_for_selector("#model-select option[value='brick']", state="attached")
            yield opened
        finally:
            browser.close()


@pytest.mark.slow
def test_uploading_a_defective_photo_shows_the_defect_decision_and_overlay(page, defect_crop,
                                                                          tmp_path: Path) -> None:
    defect_file = tmp_path / "brick_with_gravel.png"
    Image.fromarray(defect_crop[0]).save(defect_file)
    page.set_input_files("#file-input", str(defect_file))
    card = page.locator(".result-card[data-decision]")
    card.wait_for(timeout=60_000)
    assert card.get_attribute("data-decision") == "defect"
    assert card.locator(".decision").inner_text() == "DEFECT"
    overlay = card.locator("img.overlay")
    assert overlay.is_visible()
    assert overlay.evaluate("img => img.complete && img.naturalWidth") == 128
    assert "score" in card.locator(".meta").inner_text()
    assert "defect region" in card.locator(".regions").inner_text()  # where, and how big
    # Why: the region's worst patch beside the nearest good patch of a training file, both pictured.
    why = card.locator(".why figure").first
    assert why.locator("img").count() == 2
    assert why.locator("img").nth(1).evaluate("img => img.complete && img.naturalWidth") > 0
    assert "nearest good patch: " in why.inner_text() and ".png" in why.inner_text()


@pytest.mark.slow
def test_a_folder_of_images_gets_a_batch_table(page, defect_crop, good_test_crops, tmp_path: Path) -> None:
    files = []
    for i, crop in enumerate([defect_crop[0], *good_test_crops[:2]]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(crop).save(files[-1])
    (tmp_path / "notes.txt").write_text("not an image")
    page.set_input_files("#file-input", [str(f) for f in files] + [str(tmp_path / "notes.txt")])
    page.wait_for_function("document.querySelectorAll('#batch tbody tr').length === 4", timeout=60_000)
    rows = page.locator("#batch tbody tr")
    assert rows.nth(0).locator("td").nth(0).inner_text() == "0.png"  # sorted by score: the defect first
    assert rows.nth(0).locator("td").nth(1).inner_text() == "defect"
    # The text file is listed as an error, not dropped: 4 files chosen, 4 lines, 1 error.
    assert page.locator("#summary").inner_text() == "4 file(s): 1 defect, 2 good or undecided, 1 error(s)"
    error_card = page.locator(".result-card[data-decision='error']")
    assert "not an image file" in error_card.inner_text() and "notes.txt" in error_card.inner_text()
    # An error card shows no picture, not a broken-image icon.
    assert error_card.locator("img:visible").count() == 0


@pytest.mark.slow
def test_pickers_are_labelled_and_a_16_bit_tiff_original_is_shown(page, tmp_path: Path) -> None:
    import numpy as np

    labels = page.locator("#drop label.picker").all_inner_texts()
    assert [label.strip() for label in labels] == ["Image files", "A folder of images"]
    tiff = tmp_path / "part.tif"
    Image.fromarray((np.arange(96 * 128, dtype=np.uint16).reshape(96, 128) * 5)).save(tiff)
    page.set_input_files("#file-input", str(tiff))
    card = page.locator(".result-card[data-decision]")
    card.wait_for(timeout=60_000)
    original = card.locator("img.original")
    original.wait_for()
    assert original.evaluate("img => img.complete && img.naturalWidth") == 128  # rendered by the server as PNG


def test_a_dropped_folder_is_walked_to_its_files(page) -> None:
    # Browsers hand a dropped folder over as a directory entry; a fake tree stands in for one here.
    names = page.evaluate("""async () => {
        const file = name => ({isFile: true, file: done => done(new File(["x"], name))});
        const folder = (name, children) => ({isFile: false, name, createReader: () => {
            let batches = [children, []];  // readEntries answers in batches, then an empty one
            return {readEntries: done => done(batches.shift())};
        }});
        const tree = folder("line1", [file("a.png"), folder("cam2", [file("b.tif")])]);
        return (await filesOf(tree)).map(f => f.webkitRelativePath);
    }""")
    assert names == ["line1/a.png", "line1/cam2/b.tif"]


@pytest.mark.slow
def test_a_flagged_image_can_be_marked_good_and_lands_in_the_feedback_folder(page, defect_crop, tmp_path: Path) -> None:
    defect_file = tmp_path / "flagged.png"
    Image.fromarray(defect_crop[0]).save(defect_file)
    page.set_input_files("#file-input", str(defect_file))
    card = page.locator(".result-card[data-decision='defect']")
    card.wait_for(timeout=60_000)
    button = card.locator("button.feedback")
    assert button.is_visible()
    button.click()
    page.wait_for_function("document.querySelector('button.feedback').textContent.startsWith('Kept as good')",
                           timeout=30_000)
    assert "--from-feedback" in button.inner_text()


@pytest.mark.slow
def test_a_wide_strip_gets_the_whole_row_with_its_overlay_below(page, good_test_crops, tmp_path: Path) -> None:
    import numpy as np

    strip = tmp_path / "strip.png"
    Image.fromarray(np.concatenate(good_test_crops[:4], axis=1)).save(strip)  # 512 x 128
    page.set_input_files("#file-input", str(strip))
    card = page.locator(".result-card[data-decision]")
    card.wait_for(timeout=60_000)
    assert "wide" in card.get_attribute("class").split()
    original, overlay = card.locator("img.original").bounding_box(), card.locator("img.overlay").bounding_box()
    assert overlay["y"] > original["y"] + original["height"] - 1  # below, not beside
    assert overlay["width"] > 0.9 * card.bounding_box()["width"]


def test_the_api_docs_page_renders_every_operation(page, server_url) -> None:
    # Swagger UI 4 loaded its files here too, then said "Unable to render this definition" (OpenAPI 3.1).
    page.goto(server_url + "docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/predict", "/feedback", "/health", "/models"} <= {path.strip() for path in paths}
    assert page.locator("text=Unable to render this definition").count() == 0
