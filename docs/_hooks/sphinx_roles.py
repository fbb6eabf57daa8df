"""MkDocs hook: render the reStructuredText bits that mosic's docstrings use.

The docstrings are Google style ("Args:", "Returns:") with a few Sphinx habits that
Markdown does not know. After mkdocstrings has rendered a page:

- ``:class:`~mosic.trackers.Tracks``` (and ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``,
  ``:exc:``, ``:data:``, ``:obj:``) shows as inline code, ``Tracks`` (a leading ``~``
  keeps the last dotted part, as Sphinx does);
- a paragraph ending in ``::`` (reST's "literal block follows") ends in ``:``.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj|const|ref):<code>(~?)([^<]*)</code>")
_LITERAL_INTRO = re.compile(r"::</p>")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    return f"<code>{shown}</code>"


def on_page_content(html: str, **kwargs) -> str:
    html = _ROLE.sub(_role, html)
    return _LITERAL_INTRO.sub(":</p>", html)
