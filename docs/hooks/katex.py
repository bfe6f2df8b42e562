"""MkDocs hook: serve KaTeX from the built site, so that formulas render offline.

The pages' formulas are marked by ``pymdownx.arithmatex`` (generic mode) and typeset in the browser
by ``docs/javascripts/katex.js``. KaTeX itself is not kept in this repository: it is copied at build
time, unmodified, from an installed copy: ``$KATEX_DIR`` if set, else Debian's ``libjs-katex``
(``/usr/share/javascript/katex``, installed by ``.ci/setup``). Nothing is fetched from the network.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError

CANDIDATES = ("/usr/share/javascript/katex",)  # Debian's libjs-katex
NEEDED = ("katex.min.js", "katex.min.css", "fonts")
TARGET = "assets/katex"  # under site_dir; mkdocs.yml's extra_javascript / extra_css point here


def katex_dir() -> Path:
    """The folder of an installed KaTeX distribution, or a PluginError that says how to get one."""
    given = os.environ.get("KATEX_DIR")
    for folder in [given] if given else CANDIDATES:
        path = Path(folder)
        if all((path / name).exists() for name in NEEDED):
            return path
    where = f"KATEX_DIR={given}" if given else " or ".join(CANDIDATES)
    raise PluginError(
        f"KaTeX not found at {where} (needs {', '.join(NEEDED)}): install Debian's libjs-katex "
        "(apt-get install libjs-katex, as .ci/setup does) or set KATEX_DIR to a KaTeX dist folder"
    )


def on_config(config, **kwargs):
    katex_dir()  # fail before building, with the reason, rather than ship pages with raw TeX
    return config


def on_post_build(config, **kwargs) -> None:
    source, target = katex_dir(), Path(config["site_dir"]) / TARGET
    target.mkdir(parents=True, exist_ok=True)
    for name in ("katex.min.js", "katex.min.css"):
        shutil.copyfile(source / name, target / name)  # follows Debian's symlinks
    fonts = target / "fonts"
    fonts.mkdir(exist_ok=True)
    for font in (source / "fonts").iterdir():
        if font.suffix in {".woff2", ".woff", ".ttf"}:
            shutil.copyfile(font, fonts / font.name)
