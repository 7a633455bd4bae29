"""twinhub: the parts of the platform that run beside JupyterHub."""

__version__ = "0.1.0"
