"""The built book, as a reader sees it in a browser, and the build's refusal of broken input."""

import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import nbformat
import pytest

from locolib.book import build, render, toc_notebooks

ROOT = Path(__file__).resolve().parents[1]
INSTALL_BROWSER = ("Debian: apt-get install chromium chromium-driver; GitHub Actions: "
                   "browser-actions/setup-chrome with install-chromedriver")


def find_browser() -> tuple[str, str]:
    """(browser, driver): $CHROME_BIN and $CHROMEDRIVER_BIN (set by the workflow), else the first
    Chromium or Chrome and chromedriver on the PATH. Without them the browser test is skipped,
    except in CI (CI=true), where a missing browser fails it: CI must open the book."""
    names = ("chromium", "chromium-browser", "google-chrome", "chrome")
    browser = os.environ.get("CHROME_BIN") or next(filter(None, map(shutil.which, names)), None)
    driver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = f"Chromium/Chrome or chromedriver is not installed ({INSTALL_BROWSER})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


# --- the build refuses broken input ------------------------------------------------------------


def tiny_book(tmp_path: Path, page: str, notebook_code: str) -> Path:
    (tmp_path / "book").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    shutil.copy2(ROOT / "book" / "references.bib", tmp_path / "book" / "references.bib")
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")  # named by _config.yml
    (tmp_path / "book" / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/n\n"
    )
    (tmp_path / "book" / "intro.md").write_text(f"# Intro\n\n{page}\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# N"),
        nbformat.v4.new_code_cell('profile = "default"\nprofiles = {"smoke": {}, "default": {}}',
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(notebook_code),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "n.ipynb")
    return tmp_path


@pytest.mark.slow
def test_build_fails_on_a_cell_error(tmp_path: Path):
    import papermill

    book = tiny_book(tmp_path, "Fine.", "assert profile == 'default', 'the claim fails'")
    with pytest.raises(papermill.PapermillExecutionError, match="the claim fails"):
        build(book, tmp_path, profile="smoke")


@pytest.mark.slow
def test_build_fails_on_a_sphinx_warning(tmp_path: Path):
    good = tiny_book(tmp_path / "good", "Fine.", "x = 1")
    assert (build(good, good, profile="smoke") / "notebooks" / "n.html").exists()
    bad = tiny_book(tmp_path / "bad", "A link to {ref}`nowhere`.", "x = 1")
    with pytest.raises(subprocess.CalledProcessError):
        build(bad, bad, profile="smoke")


@pytest.mark.slow
def test_a_glued_number_is_pasted_and_a_missing_one_fails_the_build(tmp_path: Path):
    code = "from locolib.notebook import glue\nimport numpy as np\nglue('nb_x', np.float64(1.25))"
    good = tiny_book(tmp_path / "good", "x = {glue:text}`../notebooks/n.ipynb::nb_x:.1f`.", code)
    html = build(good, good, profile="smoke") / "book" / "intro.html"
    assert "x = 1.2" in html.read_text().replace('<span class="pasted-text">', "").replace("</span>", "")
    bad = tiny_book(tmp_path / "bad", "x = {glue:text}`../notebooks/n.ipynb::nb_y:.1f`.", code)
    with pytest.raises(subprocess.CalledProcessError):
        build(bad, bad, profile="smoke")


def test_ci_fails_rather_than_skips_without_a_browser(monkeypatch):
    monkeypatch.delenv("CHROME_BIN", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        find_browser()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        find_browser()


# --- the smoke book in headless Chromium -------------------------------------------------------


class _Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


@functools.cache
def anchors(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text())
    return parser


@pytest.fixture(scope="module")
def smoke_book(smoke_chapters) -> Path:
    """The smoke book, rendered from the chapters the notebook tests executed."""
    for notebook in toc_notebooks(ROOT):
        smoke_chapters.executed(notebook)
    return render(smoke_chapters.staging, smoke_chapters.output)


@pytest.fixture(scope="module")
def served(smoke_book: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(smoke_book))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    binary, driver_path = find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--window-size=1280,1000"):  # a laptop's width: the book's text column at its usual size
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def chapter_pages() -> list[str]:
    return ["book/intro"] + [str(p.relative_to(ROOT).with_suffix("")) for p in toc_notebooks(ROOT)]


@pytest.mark.slow
@pytest.mark.parametrize("page", chapter_pages())
def test_chapter_reads_well_in_a_browser(page: str, smoke_book: Path, served: str, browser):
    browser.get(urljoin(served, f"{page}.html"))
    assert browser.title and "404" not in browser.title
    article = browser.find_element("css selector", "article")
    assert article.text.strip(), f"{page}: empty page"

    # Math: MathJax (served from the book itself) has typeset every formula, without errors.
    state = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (!window.MathJax || !MathJax.startup) { done('no MathJax'); return; }"
        "MathJax.startup.promise.then(() => done('ok'), e => done('error: ' + e));"
    )
    formulas = browser.execute_script("return document.querySelectorAll('.math').length")
    typeset = browser.execute_script("return document.querySelectorAll('.math mjx-container').length")
    errors = browser.execute_script("return document.querySelectorAll('mjx-merror').length")
    if formulas:
        assert state == "ok", f"{page}: MathJax did not start ({state})"
        assert typeset == formulas and errors == 0, f"{page}: {typeset}/{formulas} formulas typeset, {errors} errors"

    # Figures: every image the executed notebook made is on the page and has loaded.
    images = browser.execute_script(
        "return Array.from(document.querySelectorAll('article img'))"
        ".map(i => [i.src, i.complete && i.naturalWidth > 0]);"
    )
    assert all(ok for _, ok in images), f"{page}: images that did not load: {[s for s, ok in images if not ok]}"
    executed = smoke_book.parent / "stage" / f"{page}.ipynb"
    if executed.exists():
        nb = nbformat.read(executed, as_version=4)
        made = sum(
            "image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
            for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
        )
        assert len(images) >= made, f"{page}: the notebook made {made} figures, the page shows {len(images)}"
    if page.startswith("notebooks/"):
        check_the_readers_view(page, browser)
        check_figures_are_legible(page, browser)
    screenshot(browser, smoke_book.parent / "screenshots" / f"{page.replace('/', '_')}.png")


def check_the_readers_view(page: str, browser) -> None:
    """What a reader sees first and what must fit: the answer above the first code cell, filled
    (no empty pasted number), and no visible table wider than the text column."""
    answer = browser.execute_script(
        "const a = Array.from(document.querySelectorAll('article .admonition.tip'))"
        ".find(e => e.querySelector('.admonition-title')?.textContent.trim() === 'The answer');"
        "if (!a) return null;"
        "const cell = document.querySelector('article .cell');"
        "return {text: a.textContent.trim(), first: !cell || !!(a.compareDocumentPosition(cell) & 4),"
        " empty: Array.from(a.querySelectorAll('.pasted-text')).filter(p => !p.textContent.trim()).length,"
        " pasted: a.querySelectorAll('.pasted-text').length};"
    )
    assert answer is not None, f"{page}: no 'The answer' admonition"
    assert answer["first"], f"{page}: the answer is not above the first code cell"
    assert answer["empty"] == 0 and len(answer["text"]) > len("The answer") + 40, f"{page}: the answer is empty"
    empty = browser.execute_script(
        "return Array.from(document.querySelectorAll('article .pasted-text'))"
        ".filter(p => !p.textContent.trim()).length")
    assert empty == 0, f"{page}: {empty} glued numbers are empty"
    too_wide = browser.execute_script(
        "const column = document.querySelector('article').clientWidth;"
        "return Array.from(document.querySelectorAll('article table'))"
        ".filter(t => t.checkVisibility({visibilityProperty: true, opacityProperty: true})"
        " && t.scrollWidth > column + 1)"
        ".map(t => [t.scrollWidth, column, t.textContent.trim().slice(0, 60)]);"
    )
    assert not too_wide, f"{page}: tables wider than the text column: {too_wide}"


# book_style draws a figure locolib.notebook.FIGURE_WIDTH (6.6 in) wide at 100 dpi: about 670 px
# with the inline backend's margin, which the 676 px text column at 1280 px shows unscaled, so
# that its 9 pt fonts stay 9 pt. A figure of 7.5 in is shown at 89%, one of 10 in at 67%.
MIN_FIGURE_SCALE = 0.95


def figure_problems(images: list[tuple[str, int, float]], column: float) -> list[str]:
    """What is wrong with a page's figures, given each one's (src, width of the saved image in
    px, width it is shown at in px) and the text column's width in px: a figure wider than the
    column, or one shown so much smaller than it was saved that its fonts shrink below
    ``MIN_FIGURE_SCALE`` of their size (a 9 pt label under 9 pt). A figure in a folded output
    is shown at width 0; unfolded it gets its own width, at most the column's."""
    problems = []
    for src, natural, rendered in images:
        name = src.rsplit("/", 1)[-1]
        shown = rendered or min(natural, column)
        if shown > column + 1:
            problems.append(f"{name} is shown {shown:.0f} px wide in a {column:.0f} px column")
        elif shown < MIN_FIGURE_SCALE * natural:
            problems.append(f"{name} was saved {natural} px wide and is shown at {shown:.0f} px: its fonts "
                            f"shrink to {shown / natural:.0%} (draw it at the column width, book_style())")
    return problems


def test_figure_problems_finds_wide_and_squeezed_figures():
    assert figure_problems([("a.png", 671, 671.0), ("b.png", 600, 600.0), ("c.png", 671, 0.0)], 676) == []
    squeezed = figure_problems([("_images/wide.png", 1390, 676.0)], 676)
    assert len(squeezed) == 1 and "wide.png" in squeezed[0] and "49%" in squeezed[0]
    assert len(figure_problems([("a 7.5 in figure", 761, 676.0)], 676)) == 1
    assert len(figure_problems([("folded.png", 1800, 0.0)], 676)) == 1  # folded: judged as unfolded
    assert "column" in figure_problems([("over.png", 900, 900.0)], 676)[0]


def check_figures_are_legible(page: str, browser) -> None:
    """Every figure of the page fits the text column and is shown at (nearly) the size it was
    drawn at, so that its fonts keep the size book_style() gave them."""
    column, images = browser.execute_script(  # the column: the article's width less its padding
        "const a = document.querySelector('article'), s = getComputedStyle(a);"
        "const column = a.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);"
        "return [column, Array.from(document.querySelectorAll('article img'))"
        ".map(i => [i.src, i.naturalWidth, i.getBoundingClientRect().width])];"
    )
    assert column > 0, f"{page}: no text column"
    problems = figure_problems([tuple(i) for i in images], column)
    assert not problems, f"{page}: figures a reader cannot read at the column width:\n" + "\n".join(problems)


def screenshot(browser, path: Path) -> None:
    """A full-page screenshot at the window's width, for a person to look at."""
    import base64

    path.parent.mkdir(parents=True, exist_ok=True)
    width = browser.execute_script("return window.innerWidth")
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    try:
        shot = browser.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    path.write_bytes(base64.b64decode(shot["data"]))


@pytest.mark.slow
def test_no_internal_link_is_broken(smoke_book: Path):
    broken = []
    for page in smoke_book.rglob("*.html"):
        for href in anchors(page).hrefs:
            url = urlparse(href)
            if url.scheme or url.netloc or href.startswith("mailto:"):
                continue
            target = (page.parent / unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(smoke_book)} -> {href}")
            elif url.fragment and target.suffix == ".html" and url.fragment not in anchors(target).ids:
                broken.append(f"{page.relative_to(smoke_book)} -> {href} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken)
