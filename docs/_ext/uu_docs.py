"""Local Sphinx extension for the unitary_update documentation.

Directives
----------
``.. executed::``
    Runs its Python content while the docs are built and shows the code and what it printed.
    Matplotlib figures left open are saved and shown below the output (generated, never pasted).
    The code of all ``executed`` blocks of one page shares one namespace, in page order.  An
    exception is reported as an error, so ``sphinx -W`` fails the build: tutorials cannot rot.
    Options: ``:hide-code:``, ``:hide-output:``.
``.. markdown-include:: PATH``
    Includes a Markdown file (the subset written by ``python -m unitary_update bench`` and used
    in DESIGN.md: ATX headings, pipe tables, fenced code, lists, paragraphs, inline code, links,
    images on a line of their own),
    converted to reStructuredText.  ``:headings: rubric`` turns headings into rubrics (for
    fragments inside a page); ``:optional:`` shows a note naming ``:command:`` instead of failing
    when the file does not exist yet.
``.. optional-image:: PATH``
    An image that may not have been generated yet: the image when the file exists, otherwise a
    note naming ``:command:``.  Other options are passed to ``image``.

Build-time checks (warnings, so ``-W`` turns them into failures)
----------------------------------------------------------------
* every name in ``unitary_update.__all__`` is listed in ``api/index.rst``;
* every public function and class of the package and of each module listed in the API index has a
  numpydoc docstring with Parameters (when it takes any), Returns or Yields (functions that return
  something), Raises (functions; ``uu_docs_raises_nothing`` in conf.py lists those that cannot
  raise) and Examples; the public methods of those classes need Parameters and Returns.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# executed
# ------------------------------------------------------------------------------------------------
class Executed(SphinxDirective):
    """Run the content as Python at build time; show the code and its printed output."""

    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {"hide-code": directives.flag, "hide-output": directives.flag}

    def run(self) -> list[nodes.Node]:
        code = "\n".join(self.content)
        # temp_data lives while one document is read: one namespace per page, fresh on every read
        namespace = self.env.temp_data.setdefault("uu_executed_namespace", {"__name__": "__docs__"})
        buffer = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(buffer):
                exec(compile(code, f"<{self.env.docname}:{self.lineno}>", "exec"), namespace)
        except Exception:
            message = f"executed block failed:\n{traceback.format_exc()}"
            return [self.state.document.reporter.error(message, line=self.lineno)]
        logger.info("executed block %s:%d in %.1f s", self.env.docname, self.lineno, time.perf_counter() - start)
        result: list[nodes.Node] = []
        figures = self.save_figures()
        if "hide-code" not in self.options:
            block = nodes.literal_block(code, code, language="python")
            self.set_source_info(block)
            result.append(block)
        output = buffer.getvalue().rstrip()
        if output and "hide-output" not in self.options:
            out = nodes.literal_block(output, output, language="none", classes=["executed-output"])
            self.set_source_info(out)
            result.append(out)
        for rel in figures:
            container = nodes.container(classes=["executed-figure"])
            self.state.nested_parse(
                StringList([f".. image:: {rel}"], source=self.env.docname), self.content_offset, container
            )
            result.extend(container.children)
        return result

    def save_figures(self) -> list[str]:
        """Save and close the matplotlib figures the block left open; return paths for ``image``."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None or not pyplot.get_fignums():
            return []
        outdir = Path(self.env.app.doctreedir).parent / "executed_figures"
        outdir.mkdir(parents=True, exist_ok=True)
        docdir = (Path(self.env.srcdir) / self.env.docname).parent
        paths = []
        for number in pyplot.get_fignums():
            name = f"{self.env.docname.replace('/', '-')}-{self.lineno}-{number}.png"
            pyplot.figure(number).savefig(outdir / name, dpi=100, bbox_inches="tight")
            paths.append(os.path.relpath(outdir / name, docdir).replace(os.sep, "/"))
        pyplot.close("all")
        return paths


# ------------------------------------------------------------------------------------------------
# Markdown (the small subset we write) to reStructuredText
# ------------------------------------------------------------------------------------------------
_UNDERLINES = {1: "=", 2: "-", 3: "~", 4: "^"}


def _inline(text: str) -> str:
    """Inline Markdown to reST: code spans, links; bold and italics are the same in both."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if len(part) > 1 and part.startswith("`") and part.endswith("`"):
            out.append(f"``{part[1:-1]}``")
        else:
            part = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"`\1 <\2>`__", part)
            # a word ending in "_" is a reference in reST; escape it
            part = re.sub(r"(\w)_(?=\s|$|[.,;:)])", r"\1\\_", part)
            out.append(part)
    return "".join(out)


def _table(rows: list[str]) -> list[str]:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    header, body = cells[0], [r for r in cells[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [header, *body]:
        row = row + [""] * (len(header) - len(row))
        out.append(f"   * - {_inline(row[0]) or ' '}")
        out.extend(f"     - {_inline(c) or ' '}" for c in row[1 : len(header)])
    return [*out, ""]


def markdown_to_rst(text: str, *, headings: str = "sections") -> list[str]:
    """Convert the Markdown subset described in the module docstring to reST lines."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^```(\w*)", line)
        if fence:
            language = fence.group(1) or "text"
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            out += ["", f".. code-block:: {language}", ""] + [f"   {b}" for b in body] + [""]
            i += 1
            continue
        if line.lstrip().startswith("|"):
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out += ["", *_table(rows)]
            continue
        image = re.match(r"^!\[([^\]]*)\]\(([^)\s]+)\)\s*$", line)
        if image:  # a line holding only an image
            out += ["", f".. image:: {image.group(2)}", f"   :alt: {image.group(1)}", ""]
            i += 1
            continue
        heading = re.match(r"^(#{1,4})\s+(.*)$", line)
        if heading:
            title = _inline(heading.group(2).strip())
            if headings == "rubric":
                out += ["", f".. rubric:: {title}", ""]
            else:
                out += ["", title, _UNDERLINES[len(heading.group(1))] * max(len(title), 3), ""]
            i += 1
            continue
        if (
            re.match(r"^\s*([-*]|\d+\.)\s", line)
            and out
            and out[-1].strip()
            and not re.match(r"^\s*([-*]|\d+\.)\s|^\s{2,}", out[-1])
        ):
            out.append("")  # reST needs a blank line before a list
        out.append(_inline(line))
        i += 1
    return [*out, ""]


class _OptionalFileMixin(SphinxDirective):
    def resolve(self) -> tuple[Path, str]:
        rel, path = self.env.relfn2path(directives.path(self.arguments[0]))
        return Path(path), rel

    def missing_note(self, rel: str) -> list[nodes.Node]:
        self.env.note_dependency(rel)  # a missing dependency makes Sphinx re-read the page next time
        command = self.options.get("command", "")
        text = f"``{rel}`` has not been generated yet." + (f"  It is made by ``{command}``." if command else "")
        note = nodes.note()
        self.state.nested_parse(StringList([text], source=self.env.docname), self.content_offset, note)
        return [note]


class MarkdownInclude(_OptionalFileMixin):
    """Include a Markdown file converted to reST (see the module docstring)."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {
        "headings": lambda arg: directives.choice(arg, ("sections", "rubric")),
        "optional": directives.flag,
        "command": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        path, rel = self.resolve()
        if not path.is_file():
            if "optional" in self.options:
                return self.missing_note(rel)
            return [self.state.document.reporter.error(f"markdown-include: no file {rel}", line=self.lineno)]
        self.env.note_dependency(rel)
        rst = markdown_to_rst(path.read_text(encoding="utf-8"), headings=self.options.get("headings", "sections"))
        self.state_machine.insert_input(StringList(rst, source=str(path)), str(path))
        return []


class OptionalImage(_OptionalFileMixin):
    """``image`` when the file exists, a note naming the command that makes it otherwise."""

    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {
        "alt": directives.unchanged,
        "width": directives.unchanged,
        "command": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        path, rel = self.resolve()
        if not path.is_file():
            return self.missing_note(rel)
        lines = [f".. image:: {self.arguments[0]}"]
        lines += [f"   :{key}: {self.options[key]}" for key in ("alt", "width") if key in self.options]
        node = nodes.container()
        self.state.nested_parse(StringList(lines, source=self.env.docname), self.content_offset, node)
        return node.children


# ------------------------------------------------------------------------------------------------
# Build-time checks: the API index is complete and every public docstring is complete
# ------------------------------------------------------------------------------------------------
def api_index_entries(srcdir: Path) -> tuple[set[str], list[str]]:
    """Names listed in api/index.rst (relative to ``unitary_update``), and the modules among them."""
    import unitary_update

    text = (srcdir / "api" / "index.rst").read_text(encoding="utf-8")
    entries = set(re.findall(r"^ {3}([A-Za-z_][\w.]*)\s*$", text, flags=re.MULTILINE))
    modules = sorted(
        f"unitary_update.{e}"
        for e in entries
        if e not in unitary_update.__all__ and importlib.util.find_spec(f"unitary_update.{e}") is not None
    )
    return entries, modules


def docstring_problems(name: str, obj: Any, *, raises_nothing: bool = False, method: bool = False) -> list[str]:
    """What the numpydoc docstring of ``obj`` lacks (an empty list when it is complete)."""
    from numpydoc.docscrape import ClassDoc, FunctionDoc

    if not inspect.getdoc(obj):
        return [f"{name}: no docstring"]
    is_class = inspect.isclass(obj)
    doc = ClassDoc(obj, config={"show_class_members": False}) if is_class else FunctionDoc(obj)
    problems = []
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        params = [
            p.name
            for p in signature.parameters.values()
            if p.name not in ("self", "cls") and not (is_class and issubclass(obj, BaseException))
        ]
        documented = {part.strip().lstrip("*") for p in doc["Parameters"] for part in p.name.split(",")}
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"{name}: parameters not documented: {', '.join(missing)}")
    if not is_class:
        returns_none = signature is not None and signature.return_annotation in (None, "None")
        if not returns_none and not doc["Returns"] and not doc["Yields"]:
            problems.append(f"{name}: no Returns (or Yields) section")
        if not doc["Raises"] and not raises_nothing and not method:
            problems.append(f"{name}: no Raises section")
    if not doc["Examples"] and not method:
        problems.append(f"{name}: no Examples section")
    return problems


def public_objects(modules: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Functions and classes in the ``__all__`` of the package and of each listed module, and the
    public methods those classes define themselves (documented on the class pages)."""
    found, methods = {}, {}
    for module_name in ["unitary_update", *modules]:
        module = importlib.import_module(module_name)
        for attr in getattr(module, "__all__", []):
            obj = getattr(module, attr)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found[f"{module_name}.{attr}"] = obj
            if inspect.isclass(obj) and not issubclass(obj, BaseException):
                for key, member in vars(obj).items():
                    if not key.startswith("_") and inspect.isfunction(member):
                        methods[f"{module_name}.{attr}.{key}"] = member
    return found, methods


def check_api(app: Sphinx) -> None:
    import unitary_update

    entries, modules = api_index_entries(Path(app.srcdir))
    for name in unitary_update.__all__:
        if name != "__version__" and name not in entries:
            logger.warning("unitary_update.%s is public (in __all__) but not listed in api/index.rst", name)
    objects, methods = public_objects(modules)
    for name, obj in objects.items():
        for problem in docstring_problems(name, obj, raises_nothing=name in app.config.uu_docs_raises_nothing):
            logger.warning("incomplete docstring: %s", problem)
    for name, obj in methods.items():
        for problem in docstring_problems(name, obj, method=True):
            logger.warning("incomplete docstring: %s", problem)


def escape_shape_stars(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Shapes written with unpacking, ``shape (*batch_shape, n, n)``, are not reST emphasis."""
    for i, line in enumerate(lines):
        if not line.lstrip().startswith((">>>", "...")):
            lines[i] = re.sub(r"shape \(\*(?=\w)", r"shape (\\*", line)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("executed", Executed)
    app.add_directive("markdown-include", MarkdownInclude)
    app.add_directive("optional-image", OptionalImage)
    app.add_config_value("uu_docs_raises_nothing", [], "env")
    app.connect("builder-inited", check_api)
    app.connect("autodoc-process-docstring", escape_shape_stars)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
