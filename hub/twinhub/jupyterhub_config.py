"""The JupyterHub configuration file of the embedded platform (``jupyterhub -f`` this file).

Reads the runtime the supervisor wrote (``$TWINHUB_STATE/run/runtime.json``) and lets every
part of the platform apply itself (:func:`twinhub.parts.configure_jupyterhub`). Options for
JupyterHub's own classes set in ``twinhub_config.py`` (``c.JupyterHub.*``,
``c.Spawner.*``...) are applied last, so an operator can tune anything JupyterHub offers.
"""

# ruff: noqa: F821  (``c`` is injected by JupyterHub's config loader)
from twinhub.parts import configure_jupyterhub

configure_jupyterhub(c)
