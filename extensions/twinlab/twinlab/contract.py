"""The agreement between the hub and the user side, in one dependency-free module.

The hub (``twinhub``) writes what user servers, kernels and Dask workers read: environment
variables, the ``twinhub:*`` fields of STAC items and collections, and the rules a bbox or
datetime follows. Both sides import the names from here, so neither spells them as string
literals. Importing this module imports nothing but the standard library (a test checks it),
so the hub can use it without loading twinlab's numerical stack.
"""

from __future__ import annotations

from typing import Final

# -- environment of user servers (and, where said, Dask workers) -------------------------
#: The STAC API's root through the proxy on loopback (the data lake).
ENV_STAC_URL: Final = "TWINHUB_STAC_URL"
#: The rolling cache's root through the proxy on loopback.
ENV_CACHE_URL: Final = "TWINHUB_CACHE_URL"
#: JSON: {"endpoint", "lake_bucket", "home_bucket", "credentials", "project_buckets"}.
ENV_STORAGE: Final = "TWINHUB_STORAGE"
#: JSON: service name -> public URL of every service the user may use.
ENV_SERVICES: Final = "TWINHUB_SERVICES"
#: The slug of the profile the server was started with.
ENV_PROFILE: Final = "TWINHUB_PROFILE"
#: "1" when the server's memory/CPU limits are enforced (cgroups), "0" when advisory.
ENV_LIMITS_ENFORCED: Final = "TWINHUB_LIMITS_ENFORCED"
#: The platform instance every process of it carries (orphan clean-up).
ENV_INSTANCE: Final = "TWINHUB_INSTANCE"
#: S3 endpoint and keys of the user (servers and the user's Dask workers).
ENV_S3_ENDPOINT: Final = "AWS_ENDPOINT_URL"
ENV_S3_ACCESS_KEY: Final = "AWS_ACCESS_KEY_ID"
ENV_S3_SECRET_KEY: Final = "AWS_SECRET_ACCESS_KEY"
ENV_S3_REGION: Final = "AWS_DEFAULT_REGION"
#: JupyterHub's own: the server's token and the hub's API.
ENV_HUB_TOKEN: Final = "JUPYTERHUB_API_TOKEN"
ENV_HUB_API_URL: Final = "JUPYTERHUB_API_URL"

# -- twinhub:* fields of STAC items and collections ---------------------------------------
#: (item property) where an item comes from: "local" for the lake, else the source's name.
FIELD_SOURCE: Final = "twinhub:source"
#: (search answer) per-source counts and errors of a federated search.
FIELD_SOURCES: Final = "twinhub:sources"
#: (search answer) what the search could not do everywhere (a filter a source lacks...).
FIELD_WARNINGS: Final = "twinhub:warnings"
#: (asset) why the platform will not fetch this asset.
FIELD_REFUSED: Final = "twinhub:refused"
#: (item property / asset) the grid of the data: its name, e.g. "healpix-nside64-nested".
FIELD_GRID: Final = "twinhub:grid"
FIELD_GRID_ID: Final = "twinhub:grid_id"
#: (asset) the variable an asset holds.
FIELD_VARIABLE: Final = "twinhub:variable"
#: (collection) the user who owns a collection they made.
FIELD_OWNER: Final = "twinhub:owner"
#: (collection) the sample data's version and size.
FIELD_SEED: Final = "twinhub:seed"
FIELD_SIZE: Final = "twinhub:size"
#: The value of FIELD_SOURCE for the lake's own items.
LOCAL_SOURCE: Final = "local"
