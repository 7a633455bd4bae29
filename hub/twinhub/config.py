"""The platform's own configuration: the ``Twinhub`` configurable.

Every option lives in a traitlets class with ``help=``; ``twinhub_config.py`` sets them as
``c.Twinhub.port = 8000``.  Each part of the platform (spawner, gateway, auth, ...) defines
its own configurable next to its code and names it in its ``Part.settings``, so the CLI
documents it and the generated config file shows it (:func:`twinhub.parts.config_classes`).
"""

from __future__ import annotations

from traitlets import Bool, Dict, Enum, Integer, List, Unicode, default
from traitlets.config import Configurable

DEFAULT_PROFILES: list[dict] = [
    {
        "slug": "small-cpu",
        "display_name": "Small CPU",
        "description": "1 CPU, 2 GiB memory: notebooks and light analysis.",
        "default": True,
        "gpu": False,
        "limits": {"cpu": 1.0, "memory": "2G"},
        "env": {"TWINHUB_PROFILE": "small-cpu", "OMP_NUM_THREADS": "1"},
    },
    {
        "slug": "large-cpu",
        "display_name": "Large CPU",
        "description": "2 CPUs, 8 GiB memory: bigger in-memory analysis.",
        "gpu": False,
        "limits": {"cpu": 2.0, "memory": "8G"},
        "env": {"TWINHUB_PROFILE": "large-cpu", "OMP_NUM_THREADS": "2"},
    },
    {
        "slug": "gpu",
        "display_name": "GPU",
        "description": "1 GPU, 4 CPUs, 16 GiB memory, CuPy image. Offered only where a GPU is detected.",
        "gpu": True,
        "limits": {"cpu": 4.0, "memory": "16G", "gpu": 1},
        "env": {"TWINHUB_PROFILE": "gpu"},
    },
]


class Twinhub(Configurable):
    """Where and how the embedded platform runs."""

    state_dir = Unicode(
        ".twinhub",
        help="Directory holding all platform state: hub database, secrets, logs, pid files.",
    ).tag(config=True)

    ip = Unicode("127.0.0.1", help="Address the public proxy listens on.").tag(config=True)

    port = Integer(8000, help="Port the public proxy listens on.").tag(config=True)

    public_url = Unicode(
        "",
        help="URL users reach the platform at, when it differs from http://ip:port "
        "(behind a reverse proxy). Used for OAuth callbacks and printed links.",
    ).tag(config=True)

    mode = Enum(
        ["personal", "multi-user"],
        help="personal: every server runs as the calling OS user (one person on a laptop). "
        "multi-user: one OS account per platform user, created on first spawn. "
        "Default: multi-user when run as root, personal otherwise.",
    ).tag(config=True)

    @default("mode")
    def _default_mode(self) -> str:
        import os

        return "multi-user" if os.geteuid() == 0 else "personal"

    db_url = Unicode(
        "",
        help="SQLAlchemy URL for twinhub's own tables (accounts, allocations, accounting...). "
        "Empty: SQLite in the state directory. PostgreSQL: postgresql+psycopg://user@host/db.",
    ).tag(config=True)

    profiles = List(
        Dict(),
        default_value=DEFAULT_PROFILES,
        help="Server profiles, shaped like KubeSpawner's profile_list: slug, display_name, "
        "description, default, gpu (offered only where a GPU is detected), limits "
        "{cpu, memory, gpu}, env, and kubespawner_override (used by the Kubernetes deployment).",
    ).tag(config=True)

    user_prefix = Unicode(
        "twin-",
        help="Prefix of the OS account created for each platform user in multi-user mode.",
    ).tag(config=True)

    home_root = Unicode(
        "/home",
        help="Directory under which multi-user OS accounts get their home directories.",
    ).tag(config=True)

    shared_dir = Unicode(
        "",
        help="World-traversable directory for what platform OS accounts must reach (Dask cluster "
        "directories). Empty: <state_dir>/shared when reachable by other accounts, else "
        "/var/lib/twinhub/<id>.",
    ).tag(config=True)

    idle_timeout = Integer(
        3600, help="Seconds of inactivity after which jupyterhub-idle-culler stops a server."
    ).tag(config=True)

    admin_user = Unicode(
        "admin", help="Name of the first admin account, created with a generated password."
    ).tag(config=True)

    detect_gpu = Bool(
        True, help="Offer GPU profiles only when a GPU is detected (nvidia-smi / /dev/nvidia0)."
    ).tag(config=True)

    start_timeout = Integer(
        120, help="Seconds to wait for each component to become ready at start."
    ).tag(config=True)
