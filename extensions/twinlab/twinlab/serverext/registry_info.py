"""The ``registry`` key of ``/twinlab/api/info``: the registry's services this user may use.

``{"url": <registry>, "services": [...]}``, each service as :meth:`twinlab.registry.Service.as_dict`
(the list ``twinlab.services()`` returns), asked with this server's token. Bounded: two
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
        value: dict[str, Any] = {"url": base, "services": [s.as_dict() for s in found]}
    except registry.RegistryError as e:
        value = {"url": base, "services": [], "error": str(e)}
    except Exception as e:  # an odd answer must not break the info document either
        value = {"url": base, "services": [], "error": f"{type(e).__name__}: {e}"}
    _last.update(at=now, url=base, value=value)
    return value
