"""Build hooks of the documentation site (mkdocs.yml ``hooks:``; not a page of the site).

- Results > Reports in the navigation lists every ``docs/results/*/report.md`` (and
  ``full/report.md``), and ``<!-- reproductions -->`` in the gallery becomes one card per
  experiment (title, first figure, the command), so a new experiment needs no edit here.
- ``<!-- modules: PACKAGE -->`` in a page of ``docs/api/`` becomes one ``::: MODULE``
  block per public module of PACKAGE (names not starting with ``_``), so a new module
  is in the API reference without an edit here.
- Sphinx roles in docstrings (``:class:`~implicit_reg.core.optim.EGR```), which
  mkdocstrings leaves as text, become links (:class:`SphinxRoles`, a griffe extension) or,
  where a page shows them as rendered text, code.
- :class:`CommentDocstrings`, a griffe extension (mkdocs.yml, mkdocstrings'
  ``extensions``), reads the package's ``#:`` comments above a module attribute as its
  docstring, as Sphinx autodoc does.
- A relative ``src`` or ``href`` of raw HTML in a page (mkdocs checks only Markdown links)
  must name a file of the site.
- After the build, every name in the ``__all__`` of ``implicit_reg`` and of each public
  subpackage or module directly under it (``implicit_reg.stats``) must have a docstring
  and an anchor in the API reference, and every public module must have one; each
  one that does not is a warning, so ``mkdocs build --strict`` fails on it.
  :func:`undocumented` is the same check without a build (tests/test_docs_site.py).
"""

from __future__ import annotations

import ast
import logging
import posixpath
import re
from pathlib import Path

import griffe

log = logging.getLogger("mkdocs.hooks.api_reference")

PACKAGE = "implicit_reg"
ROOT = Path(__file__).resolve().parents[2]
_MODULES = re.compile(r"^<!-- modules: ([\w.]+) -->$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):<code>(~?)([\w.]+)(?:\(\))?</code>")
_ANCHOR = re.compile(r'id="([\w.]+)"')


class CommentDocstrings(griffe.Extension):
    """A module attribute's docstring from the ``#:`` comment lines right above it."""

    def on_attribute_instance(self, *, node, attr, agent, **kwargs) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST) or attr.filepath is None:
            return
        if not isinstance(attr.parent, griffe.Module):
            return
        lines = attr.lines_collection[attr.filepath]
        doc: list[str] = []
        i = attr.lineno - 2  # the line above the assignment (lineno is 1-based)
        while i >= 0 and lines[i].lstrip().startswith("#:"):
            doc.insert(0, lines[i].lstrip()[2:].strip())
            i -= 1
        if not doc:  # the trailing form: NAME = value  #: doc
            first = lines[attr.lineno - 1]
            if "#:" in first:
                doc = [first.split("#:", 1)[1].strip()]
        if doc:
            attr.docstring = griffe.Docstring(
                "\n".join(doc), lineno=i + 2, endlineno=attr.lineno - 1, parent=attr
            )


_DOC_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+?)(\(\))?`")


class SphinxRoles(griffe.Extension):
    """Sphinx roles in the package's docstrings (``:func:`preserved```, ``:mod:`.results```)
    become links to the object's entry in the API reference: each name is resolved as Sphinx
    would (the object's class, its module, the package, then the name as written; a leading
    ``.`` is relative to the package), through re-exports to where it is defined. A name
    that resolves to nothing, or to an entry the reference does not show, stays code."""

    def on_package(self, *, pkg, loader, **kwargs) -> None:
        for obj in _objects(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _DOC_ROLE.sub(
                    lambda m, obj=obj: _link(pkg, obj, m), obj.docstring.value
                )


def _objects(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.parent is obj:
            yield from _objects(member)


def _lookup(root, path: str):
    if path != root.path and not path.startswith(root.path + "."):
        return None
    try:
        found = root if path == root.path else root[path[len(root.path) + 1 :]]
        return found.final_target if found.is_alias else found
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _link(root, obj, match: re.Match) -> str:
    short, name, call = match.group(1), match.group(2), match.group(3) or ""
    module = obj if obj.is_module else obj.module
    if name.startswith("."):
        base = module.path if module.is_init_module else module.parent.path
        candidates = [base + name]
    else:
        scopes = [o.path for o in (obj, obj.parent) if o is not None and o.is_class]
        scopes += [module.path, module.parent.path if module.parent else None]
        candidates = [f"{scope}.{name}" for scope in scopes if scope] + [name]
    text = (name.lstrip(".").rsplit(".", 1)[-1] if short or name.startswith(".") else name) + call
    for path in candidates:
        target = _lookup(root, path)
        if target is not None:
            return f'<autoref identifier="{target.path}" optional><code>{text}</code></autoref>'
    return f"`{text}`"


def _is_public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split(".")[1:])


def _submodules(module: griffe.Module) -> list[griffe.Module]:
    """The public modules defined under ``module`` (not modules it imports under a name)."""
    return [
        sub
        for sub in module.modules.values()
        if not sub.is_alias and sub.path == f"{module.path}.{sub.name}" and _is_public(sub.path)
    ]


def _walk(module: griffe.Module):
    yield module
    for sub in _submodules(module):
        yield from _walk(sub)


def load(package: str = PACKAGE, search_path: Path = ROOT) -> griffe.Module:
    """The package as griffe sees it (statically, with :class:`CommentDocstrings`)."""
    return griffe.load(
        package,
        search_paths=[str(search_path)],
        extensions=griffe.load_extensions(CommentDocstrings),
        resolve_aliases=False,
    )


def exported(root: griffe.Module) -> list[tuple[str, str, griffe.Object | None]]:
    """``(module path, name, object or None)`` for each name in the ``__all__`` of ``root``
    and of each public subpackage or module directly under it."""
    out = []
    for module in [root, *_submodules(root)]:
        for entry in module.exports or ():
            name = entry if isinstance(entry, str) else str(entry)
            try:
                member = module[name]
                target = member.final_target if member.is_alias else member
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                target = None
            out.append((module.path, name, target))
    return out


def undocumented(root: griffe.Module) -> list[str]:
    """One line per exported name that has no docstring (or does not exist)."""
    problems = []
    for module, name, target in exported(root):
        if target is None:
            problems.append(f"{module}.__all__ names {name!r}, which {module} does not define")
        elif target.docstring is None or not target.docstring.value.strip():
            where = f"{target.relative_filepath}:{target.lineno}"
            problems.append(f"{module}.{name} ({target.path}, {where}) has no docstring")
    return problems


def missing_from_reference(root: griffe.Module, anchors: set[str]) -> list[str]:
    """One line per public module, and per exported name, with no anchor in ``anchors``."""
    problems = [
        f"module {m.path} is not in the API reference" for m in _walk(root) if m.path not in anchors
    ]
    for module, name, target in exported(root):
        if f"{module}.{name}" in anchors or (target is not None and target.path in anchors):
            continue
        if target is not None:  # undocumented() has said it already
            problems.append(f"{module}.{name} is not in the API reference (docs/api/)")
    return problems


def public_modules(package: str) -> list[str]:
    """The public modules and subpackages directly under ``package``, sorted."""
    folder = ROOT.joinpath(*package.split("."))
    names = [
        p.stem if p.is_file() else p.name
        for p in folder.iterdir()
        if not p.name.startswith("_")
        and ((p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file())
    ]
    return [f"{package}.{n}" for n in sorted(names)]


# --- the results pages and the gallery of reproductions -----------------------------------

RESULTS = ROOT / "docs" / "results"
_TITLE = re.compile(r"^# (.+)$", re.MULTILINE)
_FIGURE = re.compile(r"!\[[^\]]*\]\(([^)\s]+\.png)\)")


def reports() -> list[tuple[str, str]]:
    """``(experiment, report path under docs/)`` for every committed report, the ``small``
    one of each experiment first and its ``full`` one (``full/report.md``) after it."""
    out = []
    for folder in sorted(p for p in RESULTS.iterdir() if (p / "report.md").is_file()):
        out.append((folder.name, f"results/{folder.name}/report.md"))
        if (folder / "full" / "report.md").is_file():
            out.append((f"{folder.name} (full)", f"results/{folder.name}/full/report.md"))
    return out


def reproductions_gallery() -> str:
    """Markdown cards: each experiment's title, first figure and the command that reruns it."""
    cards = []
    for name, path in reports():
        if name.endswith("(full)"):
            continue
        text = (ROOT / "docs" / path).read_text()
        title = _TITLE.search(text)
        title = title.group(1).split(":")[0].strip() if title else name
        figure = _FIGURE.search(text)
        folder = path.rsplit("/", 1)[0]
        card = [f"-   **[{title}]({path})**", ""]
        if figure:
            card += [f"    ![{title}]({folder}/{figure.group(1)})", ""]
        card += [f"    `implicit-reg reproduce {name} --scale small`"]
        cards.append("\n".join(card))
    return '<div class="grid cards" markdown>\n\n' + "\n\n".join(cards) + "\n\n</div>\n"


# --- mkdocs events ------------------------------------------------------------------------


def _pages(nav) -> set[str]:
    """The page paths a navigation (nested lists and dicts) names."""
    if isinstance(nav, str):
        return {nav}
    items = nav.values() if isinstance(nav, dict) else nav
    return set().union(*(_pages(item) for item in items)) if items else set()


def on_config(config):
    """Every committed report goes under Results > Reports in the navigation, and a page
    of docs/ or docs/results/ that mkdocs.yml does not list goes under Guides or Results, so a
    new guide is on the site without an edit of mkdocs.yml (its place there is still better)."""
    listed = _pages(config["nav"] or [])
    docs = ROOT / "docs"
    for section in config["nav"] or ():
        if not isinstance(section, dict):
            continue
        if "Guides" in section:
            section["Guides"] += [p.name for p in sorted(docs.glob("*.md")) if p.name not in listed]
        if "Results" in section:
            section["Results"] += [
                f"results/{p.name}"
                for p in sorted(RESULTS.glob("*.md"))
                if f"results/{p.name}" not in listed
            ]
            section["Results"].append({"Reports": [{n: p} for n, p in reports()]})
    return config


_anchors: set[str] = set()


def on_pre_build(config) -> None:
    _anchors.clear()


_RAW_LINK = re.compile(r'<(?:img|a)\s[^>]*?(?:src|href)="([^":#?]+)[^"]*"')


def _check_raw_links(markdown: str, page, files) -> None:
    """mkdocs validates Markdown links only: a relative ``src``/``href`` of raw HTML (the
    thumbnails of the results page) must name a file of the site too."""
    folder = posixpath.dirname(page.file.src_uri)
    for target in _RAW_LINK.findall(markdown):
        path = posixpath.normpath(posixpath.join(folder, target))
        if files.get_file_from_path(path) is None:
            log.warning(f"{page.file.src_uri}: raw HTML links to {target}, which is not in docs/")


def on_page_markdown(markdown: str, page, config, files) -> str:
    _check_raw_links(markdown, page, files)
    if page.file.src_uri == "gallery.md":
        return markdown.replace("<!-- reproductions -->", reproductions_gallery())
    if not page.file.src_uri.startswith("api/"):
        return markdown
    return _MODULES.sub(
        lambda m: "\n\n".join(f"::: {module}" for module in public_modules(m.group(1))),
        markdown,
    )


def _role(match: re.Match) -> str:
    short, name = match.group(1), match.group(2)
    text = name.rsplit(".", 1)[-1] if short else name
    if name.startswith(PACKAGE + "."):
        return f'<autoref identifier="{name}" optional><code>{text}</code></autoref>'
    return f"<code>{text}</code>"


def on_page_content(html: str, page, config, files) -> str:
    html = _ROLE.sub(_role, html)
    if page.file.src_uri.startswith("api/"):  # reST's "text::" before a code block
        html = html.replace("::</p>", ":</p>")
    if page.file.src_uri.startswith("api/"):
        _anchors.update(_ANCHOR.findall(html))
    return html


def on_post_build(config) -> None:
    root = load()
    for problem in undocumented(root) + missing_from_reference(root, _anchors):
        log.warning(problem)
