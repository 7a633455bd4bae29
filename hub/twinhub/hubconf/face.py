"""twinhub's face on the hub: name, logo, templates, where a login lands, the docs it serves.

JupyterHub's own pages are kept; ``templates/`` (first on ``c.JupyterHub.template_paths``)
overrides ``page.html`` (name, logo, navigation: Help, Accounts for admins), ``home.html``
(:mod:`twinhub.hubconf.home`) and ``spawn.html``, each extending JupyterHub's original
(``templates/<name>``) where it can. See docs/platform.md.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Unicode
from traitlets.config import Configurable

from ..process.runtime import Runtime

TEMPLATES_DIR = Path(__file__).with_name("templates")
LOGO_FILE = TEMPLATES_DIR / "twinhub-logo.svg"


def checkout_docs(module: Path) -> Path | None:
    """``<checkout>/docs`` when ``module`` (this file) lies in a source checkout
    (``<checkout>/hub/twinhub/hubconf/face.py`` beside ``<checkout>/pyproject.toml``), else
    None: an installed package's parents are site-packages and above, whose ``docs`` folder,
    if any, is not ours and must not be served to anyone without a login."""
    parents = module.resolve().parents
    if len(parents) < 4 or parents[2].name != "hub":
        return None
    if not (parents[3] / "pyproject.toml").is_file():
        return None
    return parents[3] / "docs"


# A source checkout: hub/twinhub/hubconf/face.py -> <checkout>/docs.
CHECKOUT_DOCS = checkout_docs(Path(__file__))
# An installed package: the docs are data files under the environment's prefix.
INSTALLED_DOCS = Path(sys.prefix) / "share" / "twinhub" / "docs"


class TwinhubFace(Configurable):
    """What the hub's pages show: the platform's name and logo, its docs and support."""

    platform_name = Unicode(
        "twinhub", help="Name of the platform in the hub's page titles, header and home page."
    ).tag(config=True)

    logo_file = Unicode(
        "",
        help="Image (SVG or PNG) shown in the hub's header (JupyterHub.logo_file). Empty: "
        "twinhub's own logo.",
    ).tag(config=True)

    docs_dir = Unicode(
        "",
        help="Directory of the Markdown docs served at /hub/help (index.md first, support.md "
        "at /hub/help/support). Empty: docs/ of the source checkout when the hub runs from "
        "one, else <sys.prefix>/share/twinhub/docs (where the package installs them).",
    ).tag(config=True)

    support_url = Unicode(
        "",
        help="URL of the platform's service desk. When set, /hub/help/support and the help "
        "pages link to it; empty: the support page (docs/support.md) says how to get help.",
    ).tag(config=True)

    def resolved_docs_dir(self) -> Path | None:
        """The docs directory, or None when none is found (the help page then says so)."""
        candidates = [Path(self.docs_dir)] if self.docs_dir else [CHECKOUT_DOCS, INSTALLED_DOCS]
        for d in candidates:
            if d is not None and d.is_dir():
                return d
        return None


class TwinhubHomeHooks(Configurable):
    """What other parts of the platform give the home page (set in the hub's config by
    those parts, not by operators)."""

    allocation_reader = AnyTrait(
        None,
        allow_none=True,
        help="Callable (group names) -> {'effective': {...}, 'projects': {name: allocation}}: "
        "what a user's projects allow, for the home page (set by the projects part when it is "
        "enabled). None: the home page shows no projects and offers named servers as "
        "JupyterHub's allow_named_servers says.",
    ).tag(config=True)


def configure_face(c: Any, rt: Runtime) -> None:
    """The hub's templates, logo, landing page and template variables."""
    face = TwinhubFace(config=rt.config)
    paths = list(c.JupyterHub.template_paths) if "template_paths" in c.JupyterHub else []
    if str(TEMPLATES_DIR) not in paths:
        paths.insert(0, str(TEMPLATES_DIR))
    c.JupyterHub.template_paths = paths
    c.JupyterHub.logo_file = face.logo_file or str(LOGO_FILE)
    # A login lands on the home page (/hub/home), never on a spawn: JupyterHub's default
    # sends it to /hub/spawn, which started a server unasked.
    c.JupyterHub.redirect_to_server = False
    variables = dict(c.JupyterHub.template_vars) if "template_vars" in c.JupyterHub else {}
    variables.update({"platform_name": face.platform_name, "support_url": face.support_url})
    c.JupyterHub.template_vars = variables
    # The hub's handlers read these from the hub's config (the projects part adds the
    # allocation reader there).
    for name in ("platform_name", "logo_file", "docs_dir", "support_url"):
        setattr(c.TwinhubFace, name, getattr(face, name))
