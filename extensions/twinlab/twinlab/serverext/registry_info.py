"""The ``registry`` key of ``/twinlab/api/info``: the registry's shared services.

``{"url": <registry>, "services": [...]}``, each service as :meth:`twinlab.registry.Service.as_dict`,
asked with this server's token, i.e. as the server's owner. Only entries for everybody
(``public``) or every logged-in user (``users``): whoever else the owner shares the server
with reads this document too, and must not learn of the owner's ``project:`` entries. In a
notebook, ``twinlab.services()`` still lists those (code there runs as the owner). Bounded: two
seconds in all, the answer reused for a few seconds (JupyterLab polls the info endpoint);
when the registry is off, down, slow or refuses, ``services`` is empty and ``error`` says
why: the info document never fails for it.

(The ``services`` key beside it is another thing: the platform's own services by name, as
the hub passed them in ``$TWINHUB_SERVICES``.)
"""

from __future__ import annotations

import time
from typing import Any

from twinlab import registry
from twinlab.serverext.info import info_provider

TIMEOUT = 2.0
REUSE_SECONDS = 5.0
#: Visibilities shown: those any user of the platform may see anyway.
SHARED = ("public", "users")
_last: dict[str, Any] = {}


@info_provider("registry")
def _registry() -> dict[str, Any]:
    base = registry.registry_url()
    now = time.monotonic()
    if _last and now - _last["at"] < REUSE_SECONDS and _last["url"] == base:
        reused: dict[str, Any] = _last["value"]
        return reused
    try:
        found = registry.services(timeout=TIMEOUT)
        shown = [s.as_dict() for s in found if s.visibility in SHARED]
        value: dict[str, Any] = {"url": base, "services": shown}
    except registry.RegistryError as e:
        value = {"url": base, "services": [], "error": str(e)}
    except Exception as e:  # an odd answer must not break the info document either
        value = {"url": base, "services": [], "error": f"{type(e).__name__}: {e}"}
    _last.update(at=now, url=base, value=value)
    return value
