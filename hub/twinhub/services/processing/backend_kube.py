"""The Kubernetes job backend: each job's runner is a pod of its own (kubernetes_asyncio, as
KubeSpawner uses), in ``KubeJobBackend.namespace`` (the chart's
``twinhub.services.processing.jobNamespace``), its environment in a Secret of its own.

What the service account may create there is bounded by the chart's Role and its
ValidatingAdmissionPolicy (helm/twinhub/templates/processing.yaml): pods shaped as
:meth:`KubeJobBackend.pod_manifest` makes them, nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from pathlib import Path
from typing import Any

from traitlets import Integer, Unicode

from ...spawn import podmeta
from .backend import (
    KUBE_HOME,
    KUBE_USER,
    RUNNER_MODULE,
    BackendError,
    JobBackend,
    log,
)
from .context import ProcessingContext

LABEL_JOB = "twinhub.io/job"
LABEL_COMPONENT = "twinhub.io/component"


#: Seconds a pod made here counts as pending while lists do not show it yet.
MADE_GRACE = 60.0


class KubeJobBackend(JobBackend):
    """The runner as a pod (kubernetes_asyncio, as KubeSpawner uses).

    Not exercised here (no API server on this machine): the manifest is checked by unit
    tests and validated against the Kubernetes schema in tests/kubernetes (the chart's).
    ``alive`` and ``output_tail`` answer from what the last :meth:`refresh` read (the
    interface is synchronous); the job manager's loop calls ``refresh`` through ``alive``'s
    background task.
    """

    #: HOME and USER of the user image (jupyter/docker-stacks' jovyan).
    home = KUBE_HOME
    user_name = KUBE_USER

    namespace = Unicode(
        "", help="Namespace of job pods; '': the service pod's own (its service account's)."
    ).tag(config=True)
    image = Unicode(
        "", help="Image of job pods: the user image (twinlab, Dask, the process libraries)."
    ).tag(config=True)
    image_pull_policy = Unicode("IfNotPresent", help="Job pods' imagePullPolicy.").tag(config=True)
    run_as_uid = Integer(1000, help="Uid of job pods (the user image's).").tag(config=True)
    run_as_gid = Integer(1000, help="Gid of job pods (the user image's).").tag(config=True)
    cpu = Unicode("1", help="CPU request and limit of a runner pod.").tag(config=True)
    memory = Unicode("1Gi", help="Memory request and limit of a runner pod.").tag(config=True)
    service_account = Unicode(
        "", help="Service account of job pods ('': the namespace's default; no token mounted)."
    ).tag(config=True)

    def __init__(self, ctx: ProcessingContext, **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self._phases: dict[str, str] = {}
        self._tails: dict[str, str] = {}
        self._api: Any = None
        self._refreshed = False  # once read, a pod that is not listed is gone
        # Pods made here, by when: a list that was asked before one existed must not make
        # it look gone (kept until a list shows it, or for a minute).
        self._made: dict[str, float] = {}

    def get_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        f = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        return f.read_text().strip() if f.exists() else "default"

    @staticmethod
    def pod_name(job: dict) -> str:
        """One pod (and Secret) per attempt: a job run again after a restart must not meet
        the name of its previous pod, which may still be terminating."""
        attempt = int(job.get("attempt") or 1)
        return f"twinhub-job-{job['id']}-{attempt}".lower()[:63]

    def pod_manifest(self, job: dict, env: dict[str, str]) -> dict:
        """The runner's pod: the job's environment from its own Secret (:meth:`secret_manifest`)
        so no secret shows in the pod object; no service account token; killed by Kubernetes
        past the job's wall time."""
        name = self.pod_name(job)
        labels = {
            **podmeta.labels(str(job["owner"]), job.get("project")),
            LABEL_JOB: str(job["id"]),
            LABEL_COMPONENT: "processing-job",
        }
        wall = float(job.get("wall_time") or self.ctx.settings.wall_time)
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "activeDeadlineSeconds": max(1, int(wall)),
            "securityContext": {
                "runAsUser": self.run_as_uid,
                "runAsGroup": self.run_as_gid,
                "fsGroup": self.run_as_gid,
                "runAsNonRoot": True,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "runner",
                    "image": self.image,
                    "imagePullPolicy": self.image_pull_policy,
                    "command": ["python", "-m", RUNNER_MODULE],
                    "workingDir": self.home,
                    "envFrom": [{"secretRef": {"name": name}}],
                    "resources": {
                        "requests": {"cpu": self.cpu, "memory": self.memory},
                        "limits": {"cpu": self.cpu, "memory": self.memory},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": podmeta.annotations(str(job["owner"]), job.get("project")),
            },
            "spec": spec,
        }

    def secret_manifest(self, job: dict, env: dict[str, str]) -> dict:
        """The Secret holding the runner's environment (token, job secret, S3 keys)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {
                "name": self.pod_name(job),
                "labels": {LABEL_JOB: str(job["id"]), LABEL_COMPONENT: "processing-job"},
            },
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in env.items()},
        }

    async def _core(self) -> Any:
        if self._api is None:
            # kubernetes_asyncio is only in the chart's images' paths of use: imported when
            # the Kubernetes backend starts its first pod.
            from kubernetes_asyncio import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                await config.load_kube_config()
            self._api = client.CoreV1Api()
        return self._api

    async def start(self, job: dict, secret: str, token: tuple[str, str] | None = None) -> dict:
        if not self.image:
            raise BackendError("KubeJobBackend.image is not set (the chart sets the user image)")
        token, token_id = await self._token(job, token)
        name = self.pod_name(job)
        ns = self.get_namespace()
        api: Any = None
        try:
            env = await self._environment(job, secret, token)
            env.update(HOME=self.home, USER=self.user_name, LOGNAME=self.user_name)
            try:
                api = await self._core()
                await api.create_namespaced_secret(ns, self.secret_manifest(job, env))
                await api.create_namespaced_pod(ns, self.pod_manifest(job, env))
            except Exception as e:  # the API's errors carry its answer
                raise BackendError(f"the runner's pod was not created: {e}") from e
        except BaseException:
            # Each undo on its own: a Secret that cannot be deleted must not keep the token
            # alive (nor the other way round).
            if api is not None:
                try:
                    await api.delete_namespaced_secret(name, ns)
                except Exception as e:  # never created, or the API is down
                    log.info("job %s: Secret %s not deleted: %s", job["id"], name, e)
            await self._revoke(job, token_id)
            raise
        self._phases[name] = "Pending"
        self._made[name] = time.monotonic()
        self._ensure_refresh()
        return {"kind": "kube", "pod": name, "namespace": ns, "token_id": token_id}

    def _ensure_refresh(self) -> None:
        task = self.ctx.extras.get("kube-job-refresh")
        if task is None or task.done():
            self.ctx.extras["kube-job-refresh"] = asyncio.ensure_future(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(self.ctx.settings.poll_interval)

    async def refresh(self) -> None:
        """Read the phases of job pods (and the log tail of the ended ones)."""
        api = await self._core()
        pods = await api.list_namespaced_pod(
            self.get_namespace(), label_selector=f"{LABEL_COMPONENT}=processing-job"
        )
        seen = {}
        for pod in pods.items:
            name = pod.metadata.name
            seen[name] = pod.status.phase or "Pending"
            if seen[name] in ("Succeeded", "Failed") and name not in self._tails:
                with contextlib.suppress(Exception):
                    self._tails[name] = await api.read_namespaced_pod_log(
                        name, self.get_namespace(), tail_lines=100
                    )
        now = time.monotonic()
        for name, made in list(self._made.items()):
            if name in seen or now - made > MADE_GRACE:
                del self._made[name]
            else:
                seen[name] = self._phases.get(name, "Pending")
        self._phases, self._refreshed = seen, True

    def alive(self, handle: dict) -> bool:
        if handle.get("kind") != "kube":
            return False
        self._ensure_refresh()
        phase = self._phases.get(handle["pod"])
        if phase is None:  # not read yet (a restart): alive until a refresh says otherwise
            return not self._refreshed
        return phase in ("Pending", "Running", "Unknown")

    async def stop(self, handle: dict, grace: float = 3.0) -> None:
        if handle.get("kind") != "kube":
            return
        api = await self._core()
        ns = handle.get("namespace") or self.get_namespace()
        for delete in (api.delete_namespaced_pod, api.delete_namespaced_secret):
            with contextlib.suppress(Exception):  # already gone: idempotent
                await delete(handle["pod"], ns, grace_period_seconds=int(grace))
        self._phases[handle["pod"]] = "Failed"

    def output_tail(self, handle: dict, max_bytes: int = 4096) -> str:
        return self._tails.get(str(handle.get("pod")), "")[-max_bytes:]

    async def cleanup(self, handle: dict) -> None:
        # stop() deleted the pod and its Secret; what is left is this process's memory of it.
        self._tails.pop(str(handle.get("pod")), None)
