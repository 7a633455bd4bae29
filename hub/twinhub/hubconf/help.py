"""``/hub/help``: the platform's own docs (the Markdown files of ``docs/``), served by the hub.

No internet needed: the pages are rendered here with markdown-it-py (raw HTML in the
Markdown is escaped, not passed through). ``/hub/help/`` lists every page (``index.md``
first when there is one), ``/hub/help/<name>`` renders ``<name>.md``, ``/hub/help/support``
says how to get help (``support.md``, and the service desk when
``TwinhubFace.support_url`` is set). Links between docs (``projects.md#x``) become links
between help pages. Where the docs are: :meth:`twinhub.hubconf.face.TwinhubFace.resolved_docs_dir`.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from jupyterhub.handlers import BaseHandler
from markdown_it import MarkdownIt
from tornado import web

from .face import TwinhubFace

_PAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,100}")
_TITLE = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)
SUPPORT = "support"
# Shown when the docs hold no support.md.
_SUPPORT_FALLBACK = """# Getting help

Ask your platform's administrators: they run this platform and can look at its logs
(`twinhub status`, `<state>/logs/`). Say what you did, what you expected, what happened
instead, and the time it happened.
"""


def pages(docs: Path | None) -> dict[str, Path]:
    """Help page name -> Markdown file, for every ``*.md`` directly in ``docs``."""
    if docs is None:
        return {}
    return {p.stem: p for p in sorted(docs.glob("*.md")) if _PAGE.fullmatch(p.stem)}


def title_of(text: str, fallback: str) -> str:
    m = _TITLE.search(text)
    return m.group(1).strip() if m else fallback


def renderer(help_base: str) -> MarkdownIt:
    """CommonMark with tables, raw HTML off; relative ``x.md`` links point to help pages."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def link_open(self, tokens, idx, options, env):
        token = tokens[idx]
        href = str(token.attrGet("href") or "")
        parts = urlsplit(href)
        if not parts.scheme and not parts.netloc and parts.path.endswith(".md"):
            name = Path(parts.path).stem
            token.attrSet(
                "href", help_base + name + (f"#{parts.fragment}" if parts.fragment else "")
            )
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


class HelpHandler(BaseHandler):
    """The docs index, one page, or the support page; open to everyone (the docs are the
    platform's public documentation, and someone without an account needs the support page)."""

    async def get(self, name: str = "") -> None:
        face = TwinhubFace(config=self.settings["config"])
        docs = face.resolved_docs_dir()
        found = pages(docs)
        help_base = self.hub.base_url + "help/"
        md = renderer(help_base)
        if not name:
            await self._index(found, md, docs, face)
            return
        if name == SUPPORT and SUPPORT not in found:
            text = _SUPPORT_FALLBACK
        elif name in found:
            text = found[name].read_text(encoding="utf-8")
        else:
            raise web.HTTPError(404, f"No help page {name!r}: see the list at {help_base}")
        await self._render(
            title=title_of(text, name),
            body=md.render(text),
            page=name,
            support_url=face.support_url if name == SUPPORT else "",
        )

    async def _index(self, found: dict[str, Path], md: MarkdownIt, docs, face) -> None:
        intro = ""
        if "index" in found:
            intro = md.render(found["index"].read_text(encoding="utf-8"))
        listing = [
            {"name": n, "title": title_of(p.read_text(encoding="utf-8"), n)}
            for n, p in found.items()
            if n != "index"
        ]
        if SUPPORT not in found:
            listing.append({"name": SUPPORT, "title": "Getting help"})
        await self._render(
            title="Help",
            body=intro,
            page="",
            listing=listing,
            docs_missing=docs is None,
            support_url=face.support_url,
        )

    async def _render(self, **ns) -> None:
        self.finish(await self.render_template("help.html", **ns))
