"""The evaluation gallery: what it marks and lists, that descriptions stay text, and that it
renders and filters in a real browser (headless Chromium)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from PIL import Image

from povid_kedro.evaluation.gallery import ModelOutputs, gallery_html
from povid_kedro.ingest.images import ImageFolder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INJECTED = "<img src=x onerror=\"document.title='pwned'\">"


def _caption(image_id, caption, hallucinated=(), named=(), truth=()):
    return {
        "image_id": image_id,
        "caption": caption,
        "hallucinated": [{"word": w, "object": o} for w, o in hallucinated],
        "objects": sorted(named),
        "gt_objects": sorted(truth),
    }


@pytest.fixture()
def page(tmp_path):
    for i, colour in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (96, 96), colour).save(tmp_path / f"img{i}.png")
    instances = {
        "images": [{"id": i, "file_name": f"img{i}.png"} for i in range(3)],
        "categories": [
            {"id": 1, "name": "cup", "supercategory": "kitchen"},
            {"id": 2, "name": "car", "supercategory": "street"},
        ],
        "annotations": [
            {"image_id": 0, "category_id": 1},
            {"image_id": 1, "category_id": 1},
            {"image_id": 2, "category_id": 2},
        ],
    }
    base = ModelOutputs(
        "base",
        {
            "captions": [
                _caption(0, "A cup and a Fork.", [("Fork", "fork")], {"cup", "fork"}, {"cup"}),
                _caption(1, "A cup.", [], {"cup"}, {"cup", "plate"}),
                _caption(2, f"A car. {INJECTED}", [], {"car"}, {"car"}),
            ]
        },
        {"random": [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "No"}]},
    )
    povid = ModelOutputs(
        "stage2",
        {
            "captions": [
                _caption(0, "A cup.", [], {"cup"}, {"cup"}),
                _caption(1, "A cup and a knife.", [("knife", "knife")], {"cup", "knife"}, {"cup"}),
                _caption(2, "A car.", [], {"car"}, {"car"}),
            ]
        },
        {
            "random": [
                {"question_id": 1, "text": "No, there is not."},
                {"question_id": 2, "text": "No"},
            ]
        },
    )
    questions = {
        "random": [
            {"question_id": 1, "image": "img0.png", "text": "Is there a fork?", "label": "no"},
            {"question_id": 2, "image": "img1.png", "text": "Is there a car?", "label": "no"},
        ]
    }
    html = gallery_html(
        ImageFolder(tmp_path), instances, [base, povid], questions, sample=3, seed=0, image_side=64
    )
    path = tmp_path / "gallery.html"
    path.write_text(html)
    return path


def test_hallucinations_are_marked_and_missed_objects_and_changed_answers_listed(page):
    html = page.read_text()
    assert '<mark class="hal">Fork</mark>' in html  # the word as written, marked
    assert '<mark class="hal">knife</mark>' in html
    assert "missed: plate" in html  # base on img1
    assert re.search(r"Is there a fork\?</td><td>no</td><td>yes</td><td>no</td>", html)
    assert "Is there a car?" not in html  # both models answered it alike
    assert html.count("data:image/png;base64,") == 3  # inline: no network at view time
    assert 'data-scene="kitchen" data-fixed="1" data-introduced="0"' in html  # img0
    assert 'data-scene="kitchen" data-fixed="0" data-introduced="1"' in html  # img1


def test_a_description_is_text_never_markup(page):
    html = page.read_text()
    assert INJECTED not in html
    assert "&lt;img src=x onerror=" in html


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_the_gallery_renders_and_filters_in_a_browser(page, tmp_path):
    dom = _chromium("--dump-dom", page.as_uri()).stdout
    assert '<mark class="hal">Fork</mark>' in dom
    assert "<title>POVID evaluation gallery</title>" in dom  # the injected handler never ran
    assert "3 shown" in dom
    # The filter preset in the address: only the image whose hallucination POVID fixed.
    fixed = _chromium("--dump-dom", page.as_uri() + "#change=fixed").stdout
    sections = re.findall(r"<section [^>]*>", fixed)
    assert len(sections) == 3
    assert [("hidden" in s) for s in sections] == [False, True, True]
    assert "1 shown" in fixed
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1000,700", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert image.size == (1000, 700)
    assert len(set(image.getdata())) > 10  # text and images drawn, not a blank page
