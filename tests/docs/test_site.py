"""The documentation site, opened in a real browser (headless Chromium, Debian's ``chromium``).

The site is built from the repository (``mkdocs build --strict``) into a temporary folder, every
page is loaded with JavaScript running, and on the DOM the browser ends with we check: no internal
link, image, script or stylesheet that points at a missing file or anchor, nothing loaded from
another host, every formula typeset by KaTeX (no ``.arithmatex`` element without ``.katex``, no
``.katex-error``, no raw ``$...$``, ``\\(`` or ``\\[`` left in the text), and the API pages present.
Screenshots of the home page, the API reference and a sampler page are written to the test's
temporary folder (the path is printed); ``python tests/docs/test_site.py DIR`` writes them to DIR
(docs/figures/screenshots/ holds the committed ones).

Without Chromium the tests are skipped with the reason; ``.ci/setup`` installs it.
"""

from __future__ import annotations

import concurrent.futures
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
API_PAGES = ("api", *(f"reference/{name}" for name in (
    "posterior", "samplers", "priors", "diagnostics", "metrics", "plots", "distributed", "evidence", "data",
    "cli", "operators",
)))
SCREENSHOTS = {"home.png": "index.html", "api.png": "api/index.html", "smc.png": "smc/index.html"}
SKIP_TEXT = {"code", "pre", "script", "style", "annotation", "math", "textarea"}
RAW_MATH = re.compile(r"\$[^$\s][^$]*\$|\\\(|\\\[")


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def browse(url: str, *args: str, timeout: float = 60) -> str:
    """The DOM of ``url`` after its scripts ran (or whatever ``args`` ask for), as Chromium prints it."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args, url,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {done.stderr[-2000:]}")
    return done.stdout


def build(site: Path, config: Path = ROOT / "mkdocs.yml") -> Path:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(config), "-d", str(site)]
    done = subprocess.run(mkdocs, cwd=config.parent, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, f"mkdocs build failed:\n{done.stdout}\n{done.stderr}"
    return site


class Page(html.parser.HTMLParser):
    """What the checks need from a page's DOM: references, ids, formulas, and the visible text."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: set[str] = set()
        self.math = self.typeset = self.errors = 0
        self.text: list[str] = []
        self._skip = 0
        self._stack: list[tuple[str, bool]] = []  # (tag, opened an .arithmatex element)
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for attribute in ("href", "src"):
            if attrs.get(attribute) is not None:
                self.refs.append((tag, attribute, attrs[attribute]))
        self.math += "arithmatex" in classes
        self.typeset += "katex" in classes and any(math for _, math in self._stack)
        self.errors += "katex-error" in classes
        if tag in {"br", "img", "input", "link", "meta", "hr", "source", "path", "line", "rect", "use"}:
            return
        self._stack.append((tag, "arithmatex" in classes))
        self._skip += tag in SKIP_TEXT

    def handle_endtag(self, tag):
        while self._stack:
            opened, _ = self._stack.pop()
            self._skip -= opened in SKIP_TEXT
            if opened == tag:
                break

    def handle_data(self, data):
        if not self._skip:
            self.text.append(data)


def check_page(site: Path, relative: str, dom: str, pages: dict[str, Page]) -> list[str]:
    """The problems of one page (an empty list when there are none)."""
    page, problems = pages[relative], []
    base = (site / relative).parent
    for tag, attribute, value in page.refs:
        parts = urlsplit(value)
        if parts.scheme in {"mailto", "javascript", "data"}:
            continue
        if parts.scheme or parts.netloc:
            if tag != "a":  # a resource fetched from another host: the site must work offline
                problems.append(f"<{tag} {attribute}={value!r}> loads from another host")
            continue
        if not parts.path:  # a fragment of this page
            target, fragment = site / relative, parts.fragment
        else:
            target = (base / unquote(parts.path)).resolve()
            fragment = parts.fragment
            if value.endswith("/") or target.is_dir():
                target = target / "index.html"
        if not target.resolve().is_relative_to(site.resolve()):
            problems.append(f"<{tag} {attribute}={value!r}> points outside the site")
        elif not target.is_file():
            problems.append(f"<{tag} {attribute}={value!r}> is missing ({target.relative_to(site.resolve())})")
        elif fragment and target.suffix == ".html":
            key = target.resolve().relative_to(site.resolve()).as_posix()
            ids = pages[key].ids if key in pages else Page(target.read_text(encoding="utf-8")).ids
            if unquote(fragment) not in ids:
                problems.append(f"<a href={value!r}>: no anchor #{fragment} there")
    if page.typeset < page.math:
        problems.append(f"{page.math - page.typeset} of {page.math} formulas not typeset by KaTeX")
    if page.errors:
        problems.append(f"{page.errors} KaTeX errors")
    text = " ".join(page.text)
    for raw in sorted(set(RAW_MATH.findall(text)))[:5]:
        problems.append(f"raw TeX left in the text: {raw!r}")
    return problems


def open_site(site: Path, relatives: list[str]) -> dict[str, str]:
    """The DOM of each page after its scripts ran, two browsers at a time (the machine's cores)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        doms = pool.map(lambda r: browse((site / r).as_uri(), "--dump-dom"), relatives)
        return dict(zip(relatives, doms, strict=True))


def check_site(site: Path, relatives: list[str] | None = None) -> dict[str, list[str]]:
    relatives = relatives or sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                                    if p.name != "404.html")
    doms = open_site(site, relatives)
    pages = {relative: Page(dom) for relative, dom in doms.items()}
    return {r: problems for r in relatives if (problems := check_page(site, r, doms[r], pages))}


def screenshots(site: Path, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, relative in SCREENSHOTS.items():
        path = folder / name
        browse((site / relative).as_uri(), f"--screenshot={path}", "--window-size=1280,1000",
               "--hide-scrollbars")
        assert path.stat().st_size > 10_000, f"{path}: the screenshot is (nearly) empty"
        paths.append(path)
    return paths


needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="Chromium not found (Debian: apt-get install chromium; .ci/setup installs it)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("site") / "site")


@needs_chromium
def test_every_page_opens_with_its_links_images_and_formulas(site, tmp_path_factory):
    for page in API_PAGES:
        assert (site / page / "index.html").is_file(), f"API page {page} was not built"
    problems = check_site(site)
    assert not problems, "\n".join(f"{page}: {p}" for page, ps in problems.items() for p in ps)
    html_pages = [p for p in site.rglob("*.html") if p.name != "404.html"]
    assert len(html_pages) >= 25  # the pages of the nav, API pages included
    typeset = Page(open_site(site, ["derivations/index.html"])["derivations/index.html"])
    assert typeset.math >= 20 and typeset.typeset == typeset.math  # the derivations are typeset
    folder = tmp_path_factory.mktemp("screenshots")
    print("screenshots:", *screenshots(site, folder), sep="\n  ")


@needs_chromium
def test_the_check_fails_on_a_broken_page(site, tmp_path):
    """A copy of the site with a broken link, a missing image, a raw formula and no KaTeX script."""
    broken = shutil.copytree(site, tmp_path / "site")
    index = broken / "index.html"
    index.write_text(
        index.read_text(encoding="utf-8").replace(
            "</article>",
            '<p><a href="no-such-page/">a</a> <a href="smc/#no-such-anchor">b</a> '
            '<img src="figures/no-such.png"> raw $x^2$ here</p></article>',
        ),
        encoding="utf-8",
    )
    (broken / "assets" / "katex" / "katex.min.js").unlink()
    problems = check_site(broken, ["index.html", "derivations/index.html"])
    found = "\n".join(problems.get("index.html", []))
    for expected in ("no-such-page/", "no-such-anchor", "figures/no-such.png", "raw TeX", "katex.min.js",
                     "not typeset"):
        assert expected in found, f"the check missed {expected!r}:\n{found}"
    assert any("not typeset" in p for p in problems.get("derivations/index.html", []))


if __name__ == "__main__":  # python tests/docs/test_site.py DIR: build, check, and write the screenshots to DIR
    if chromium() is None:
        sys.exit("Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        built = build(Path(tmp) / "site")
        for page, problems in check_site(built).items():
            print(page, *problems, sep="\n  ")
        print(*screenshots(built, Path(sys.argv[1] if len(sys.argv) > 1 else "docs/figures/screenshots")), sep="\n")
