"""Hub-managed services: one package each (datalake, ...), plus what they share.

Every service is an *external* JupyterHub service: the supervisor (embedded) or its own pod
(Kubernetes) runs it, the hub registers it under ``/services/<name>/`` and the proxy routes
there.  Every request is authenticated against the hub (:mod:`.hubauth`) and must carry the
service's access scope; :mod:`.registration` registers a service and grants that scope.
"""
