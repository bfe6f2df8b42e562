"""Griffe extension: the reStructuredText of the docstrings, as Markdown for the API pages.

The docstrings are NumPy-style and written for ``help()`` as well as for the site, so they use a
little reStructuredText that Markdown would show raw:

- roles, ``:func:`name``` / ``:class:`~pkg.Name``` -> a code span (``name`` / ``Name``);
- a literal block introduced by ``::`` -> a fenced code block;
- double-backtick literals in a parameter's type (``x : Tensor, shape ``(n, d)````), which the
  handler puts in a code element as they are -> the bare text.

Double-backtick literals in prose are already Markdown code spans and are left as they are.
"""

from __future__ import annotations

import re
import textwrap

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|obj|exc|const):`~?([^`<]*?)(?:\s*<[^>]*>)?`")
TYPED = {"Parameters", "Other Parameters", "Returns", "Yields", "Receives", "Raises", "Warns", "Attributes"}


def _role(match: re.Match) -> str:
    target = match.group(1).strip()
    if match.group(0).split("`", 1)[1].startswith("~"):
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _literal_blocks(text: str) -> str:
    """``paragraph::`` + blank line + indented block -> ``paragraph:`` + a fenced block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines) and not lines[i + 1].strip():
            indent = len(line) - len(line.lstrip())
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if block:
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head + ":")
                out.append("")
                pad = " " * indent
                out.append(pad + "```")
                out.extend(pad + code if code.strip() else "" for code in textwrap.dedent("\n".join(block)).split("\n")[1:])
                out.append(pad + "```")
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _types(text: str) -> str:
    """Double backticks dropped from the type part of the entries of the parameter-like sections
    (``name : type`` lines, or the bare ``type`` lines of Returns), which are shown as code."""
    lines, section = text.split("\n"), None
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            section = line.strip()
        elif section in TYPED and line[:1].strip() and "``" in line:
            head, sep, kind = line.partition(" : ")
            lines[i] = head + sep + kind.replace("``", "") if sep else line.replace("``", "")
    return "\n".join(lines)


def markdown(text: str) -> str:
    return _types(_literal_blocks(ROLE.sub(_role, text)))


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
