"""mkdocs hook: expand `::: jaxda.pkg` API stubs of packages without `__all__`.

mkdocstrings renders the re-exported names (`from ._x import Y as Y`) of a package only
when they are listed in `__all__`. For packages that do not define it, this hook reads
the package's `__init__.py` with `ast` (no import of JAX) and adds an explicit
`members:` list of its public re-exports, in source order.
"""

import ast
import pathlib
import re


ROOT = pathlib.Path(__file__).resolve().parent.parent
STUB = re.compile(r"^::: (jaxda(?:\.\w+)*)[ \t]*$", re.MULTILINE)


def _public_names(module: str) -> list[str] | None:
    rel = pathlib.Path(*module.split("."))
    init = ROOT / rel / "__init__.py"
    if not init.exists():
        return None
    tree = ast.parse(init.read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == "__all__" for t in targets):
                return None  # mkdocstrings follows __all__ itself
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            for alias in node.names:
                name = alias.asname or alias.name
                if not name.startswith("_") and alias.asname == alias.name:
                    names.append(name)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            if not node.name.startswith("_"):
                names.append(node.name)
    return names


def on_page_markdown(markdown, page, config, files):
    def expand(match):
        names = _public_names(match.group(1))
        if not names:
            return match.group(0)
        members = "".join(f"\n        - {n}" for n in names)
        return f"{match.group(0)}\n    options:\n      members:{members}"

    return STUB.sub(expand, markdown)


# --------------------------------------------------------------------------------------
# Docstrings often start a list right after a line such as "**Arguments:**"; Markdown
# needs a blank line there. This preprocessor inserts it (outside code fences), for
# the pages and for the docstrings rendered by mkdocstrings.

import markdown  # noqa: E402
from mkdocs.plugins import event_priority  # noqa: E402


ITEM = re.compile(r"^\s{0,3}(?:[-*+]|\d+\.)\s")
FENCE = re.compile(r"^\s*(```|~~~)")


class _ListSpacing(markdown.preprocessors.Preprocessor):
    def run(self, lines):
        out, in_fence, in_list = [], False, False
        for line in lines:
            if FENCE.match(line):
                in_fence = not in_fence
            elif not in_fence:
                if not line.strip():
                    in_list = False
                elif ITEM.match(line):
                    if not in_list and out and out[-1].strip():
                        out.append("")
                    in_list = True
            out.append(line)
        return out


class ListSpacing(markdown.Extension):
    def extendMarkdown(self, md):
        md.preprocessors.register(_ListSpacing(md), "jaxda_list_spacing", 25)


@event_priority(100)  # before mkdocstrings reads the markdown extensions
def on_config(config):
    config.markdown_extensions.append(ListSpacing())
    return config
