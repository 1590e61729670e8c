"""Check that the built HTML docs work opened from disk with no network.

    python .ci/check_offline_docs.py [HTML_DIR]        # default: docs/_build/html

Fails (exit 1, one line per problem: file and URL) when

* a page loads anything from another host: a ``<script src>``, a ``<link href>`` other than plain
  navigation links (stylesheet, preload, icon, manifest, ...), an ``<img>``/``<iframe>``/``<source>``
  ``src`` or ``srcset``, an ``@import`` or a ``url(...)`` (fonts, images) in an inline ``<style>``,
  a ``style`` attribute or any ``.css`` file, pointing to ``http://``, ``https://`` or
  protocol-relative ``//``;
* a page with math (an element of class ``math``: Sphinx's ``\\(...\\)`` and ``\\[...\\]`` for
  MathJax) loads no MathJax script, or the script it loads is not in the build directory, or has
  no ``output/`` folder (the fonts) beside it.

Plain ``<a href>`` links to other sites are fine (following one needs the network, reading the
page does not).  Standard library only.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REMOTE = re.compile(r"^\s*(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//", re.ASCII)  # http://, https://, //, ftp:// ...
LOCAL_SCHEMES = ("data:", "blob:", "about:", "javascript:", "mailto:", "#")
# <link rel> values that only name another page (following them needs the network, loading does not).
NAVIGATION_RELS = {
    "alternate", "author", "bookmark", "canonical", "external", "help", "index", "license", "next",
    "nofollow", "noopener", "noreferrer", "prev", "search", "tag", "top", "up", "first", "last",
    "contents", "copyright", "glossary", "chapter", "section", "subsection", "appendix", "start",
    "me",
}  # fmt: skip
CSS_IMPORT = re.compile(r"""@import\s+["']([^"']+)["']""", re.IGNORECASE)  # @import url(...): CSS_URL
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+?)["']?\s*\)""", re.IGNORECASE)


def is_remote(url: str) -> bool:
    """True for an address on another host: ``scheme://...`` or protocol-relative ``//...``."""
    url = url.strip()
    if url.lower().startswith(LOCAL_SCHEMES):
        return False
    if url.lower().startswith("file:"):
        return False
    return bool(REMOTE.match(url))


def css_urls(css: str) -> list[str]:
    """Every address an ``@import`` or ``url(...)`` in a stylesheet loads."""
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    return [m.group(1) for m in CSS_IMPORT.finditer(css)] + [m.group(1) for m in CSS_URL.finditer(css)]


class PageScanner(HTMLParser):
    """Collects the addresses a page loads (not the ones it merely links to)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.loads: list[tuple[str, str]] = []  # (what, url)
        self.scripts: list[str] = []  # every <script src>, local or not
        self.has_math = False  # an element of class "math" (left for MathJax to typeset)
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if "math" in a.get("class", "").split():
            self.has_math = True
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])
            self.loads.append(("<script src>", a["src"]))
        elif tag == "link" and a.get("href"):
            rels = set(a.get("rel", "").lower().split())
            if not rels or not rels <= NAVIGATION_RELS:
                self.loads.append((f'<link rel="{a.get("rel", "")}">', a["href"]))
        elif tag in ("img", "iframe", "embed", "source", "audio", "video", "track", "input", "object"):
            for attr in ("src", "data", "poster"):
                if a.get(attr):
                    self.loads.append((f"<{tag} {attr}>", a[attr]))
            for part in a.get("srcset", "").split(","):
                if part.strip():
                    self.loads.append((f"<{tag} srcset>", part.split()[0]))
        if a.get("style"):
            self.loads.extend(("style attribute", u) for u in css_urls(a["style"]))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.loads.extend(("<style>", u) for u in css_urls(data))


def local_target(page: Path, url: str) -> Path:
    """The file a relative address on ``page`` names (query and fragment dropped)."""
    path = unquote(urlsplit(url).path)
    return (page.parent / path).resolve()


def check(root: Path) -> list[str]:
    problems: list[str] = []
    pages = sorted(root.rglob("*.html"))
    if not pages:
        return [f"{root}: no .html files (build the docs first)"]
    math_pages = 0
    for page in pages:
        rel = page.relative_to(root)
        text = page.read_text(encoding="utf-8", errors="replace")
        scanner = PageScanner()
        scanner.feed(text)
        scanner.close()
        problems += [f"{rel}: {what} loads {url}" for what, url in scanner.loads if is_remote(url)]
        if scanner.has_math:
            math_pages += 1
            mathjax = [s for s in scanner.scripts if "mathjax" in s.lower()]
            if not mathjax:
                problems.append(f"{rel}: has math but loads no MathJax script")
            for src in mathjax:
                if is_remote(src):
                    continue  # already reported above
                target = local_target(page, src)
                if not target.is_file():
                    problems.append(f"{rel}: MathJax script {src} is missing ({target})")
                elif (
                    not (target.parent / "output" / "chtml" / "fonts").is_dir()
                    and not (target.parent / "output" / "svg").is_dir()
                ):
                    problems.append(f"{rel}: MathJax at {src} has no output/ (fonts) beside it")
    for css in sorted(root.rglob("*.css")):
        rel = css.relative_to(root)
        text = css.read_text(encoding="utf-8", errors="replace")
        problems += [f"{rel}: @import/url() loads {url}" for url in css_urls(text) if is_remote(url)]
    print(f"checked {len(pages)} pages ({math_pages} with math) and {len(list(root.rglob('*.css')))} stylesheets")
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "docs/_build/html")
    if not root.is_dir():
        print(f"{root}: not a directory (build the docs first)", file=sys.stderr)
        return 1
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"FAILED: {len(problems)} network dependencies in {root}")
        return 1
    print(f"OK: {root} loads nothing from the network")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
