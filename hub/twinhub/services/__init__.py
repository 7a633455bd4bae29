"""Hub-managed services: one package each (datalake, ...), plus what they share.

Every service is an *external* JupyterHub service: the supervisor (embedded) or its own pod
(Kubernetes) runs it, the hub registers it under ``/services/<name>/`` and the proxy routes
there.  Every request is authenticated against the hub (:mod:`.hubauth`) and must carry the
service's access scope; :mod:`.registration` registers a service and grants that scope.
:class:`.base.AsgiService` is what every service's part shares (port, URLs, uvicorn
component, config file, registration); :mod:`.asgi` what every service's requests share
(limits, one body read, JSON errors).
"""
