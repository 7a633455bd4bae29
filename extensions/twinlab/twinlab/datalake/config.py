"""Where the data lake is, read from the environment a twinhub user server gets.

The hub puts these into every user server (and Dask workers): ``TWINHUB_STAC_URL`` (the
STAC API, a JupyterHub service), ``JUPYTERHUB_API_TOKEN`` (the server's token, accepted by
hub services) and the S3 settings (``AWS_*``, ``TWINHUB_STORAGE``) that s3fs reads itself.
"""

from __future__ import annotations

from typing import Any

from twinlab import environment
from twinlab.contract import ENV_HUB_TOKEN, ENV_STAC_URL


class DatalakeError(RuntimeError):
    """The data lake cannot be reached or used as configured (the message says why)."""


class StacAuthError(DatalakeError, PermissionError):
    """The STAC service refused the credentials (HTTP 401/403)."""


class StacUnreachable(DatalakeError, ConnectionError):
    """Nothing answers at the STAC URL, or it does not answer like a STAC API."""


def stac_url(url: str | None = None) -> str:
    """The STAC API root: ``url`` or ``$TWINHUB_STAC_URL``, with a trailing slash."""
    url = url or environment.stac_url()
    if not url:
        raise DatalakeError(
            f"no STAC API URL: pass url=... or set {ENV_STAC_URL} (twinhub sets it in user "
            "servers, e.g. http://127.0.0.1:8000/services/stac/)"
        )
    if not url.startswith(("http://", "https://")):
        raise DatalakeError(f"STAC API URL {url!r} is not an http(s) URL")
    return url if url.endswith("/") else url + "/"


def api_token(token: str | None = None) -> str:
    """The token for hub services: ``token`` or ``$JUPYTERHUB_API_TOKEN``.

    ``token=""`` means "no token" (an open STAC API elsewhere).
    """
    if token is not None:
        return token
    env = environment.hub_token()
    if not env:
        raise DatalakeError(
            f"no API token for the STAC service: set {ENV_HUB_TOKEN} (twinhub sets it in "
            "user servers), pass token=..., or token='' for a STAC API without authentication"
        )
    return env


def storage() -> dict[str, Any]:
    """``$TWINHUB_STORAGE`` decoded: ``endpoint``, ``lake_bucket``, ``home_bucket``."""
    try:
        return environment.storage()
    except environment.SettingError as e:
        raise DatalakeError(str(e)) from None


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs keyword arguments for the platform's object store.

    s3fs reads ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` itself and botocore reads
    ``AWS_ENDPOINT_URL``; we also pass the endpoint explicitly from the other variables so
    that older botocore versions (which ignore ``AWS_ENDPOINT_URL``) reach the same store.
    """
    endpoint = environment.s3_endpoint() or (
        environment.has_storage() and storage().get("endpoint")
    )
    return {"endpoint_url": endpoint} if endpoint else {}
