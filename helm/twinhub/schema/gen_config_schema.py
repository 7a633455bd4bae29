"""Write the generated parts of helm/twinhub/values.schema.json: `twinhub.config` from
twinhub's own configurables (:func:`twinhub.parts.config_classes`: one section per class,
each listing that class's config traits; traitlets would only warn about, and ignore, an
unknown one), and the keys a profile's `kubespawner_override` may hold (KubeSpawner's config
traits, TwinhubKubeSpawner's). The rest of the schema is written by hand.

Regenerate after adding or changing a trait (from the repository root)::

    PYTHONPATH=hub:extensions/twinlab /opt/twinhub/venv/bin/python \
        helm/twinhub/schema/gen_config_schema.py

``--check`` exits 1 (writing nothing) when the schema file is out of date.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from traitlets import Any as AnyTrait
from traitlets import Bool, Dict, Enum, Float, Int, List, Set, TraitType, Tuple, Unicode

from twinhub.parts import config_classes
from twinhub.spawn.kube import TwinhubKubeSpawner

SCHEMA = Path(__file__).resolve().parent.parent / "values.schema.json"

#: Traits the chart sets from its own values: the schema refuses them under twinhub.config so
#: that there is one place for each (section -> trait -> the value to use instead).
CHART_OWNED = {
    "Twinhub": {
        "profiles": "twinhub.profiles",
        "public_url": "twinhub.publicUrl",
        "state_dir": "the chart (/srv/twinhub/state)",
    },
    # The NetworkPolicy's SMTP port and the password Secret's mount come from the same values.
    "TwinhubDesk": {
        "smtp_host": "twinhub.services.desk.smtp.host",
        "smtp_port": "twinhub.services.desk.smtp.port",
        "smtp_username": "twinhub.services.desk.smtp.username",
        "smtp_password_file": "twinhub.services.desk.smtp.existingSecret and key",
    },
    # Job pods run the chart's user image in the release's namespace, as its uid and gid;
    # their size comes from the processing service's values (used when the backend's class
    # is among the configurables).
    "KubeJobBackend": {
        "image": "twinhub.userImage",
        "namespace": "twinhub.services.processing.jobNamespace",
        "run_as_uid": "the chart (the user image's uid, 1000)",
        "run_as_gid": "the chart (the user image's gid, 1000)",
        "cpu": "twinhub.services.processing.jobPods.cpu",
        "memory": "twinhub.services.processing.jobPods.memory",
    },
    # Sized with the tiles pods' memory and CPU limits, in the same values.
    "TwinhubTiles": {
        "chunk_cache_bytes": "twinhub.services.tiles.chunkCacheBytes",
        "tile_cache_bytes": "twinhub.services.tiles.tileCacheBytes",
        "render_threads": "twinhub.services.tiles.renderThreads",
    },
}


#: Traits holding a secret: `twinhub.config` is rendered into the ConfigMap twinhub-runtime,
#: which anyone who may read ConfigMaps (Kubernetes' `view` role) reads. The schema refuses
#: them (section -> trait -> the Secret to use instead); every pod reads these from files of
#: its mounted Secrets.
SECRET_TRAITS = {
    "Twinhub": {
        "db_url": "the db-url Secret: twinhub.database (CNPG's, or external.existingSecret)"
    },
    "TwinhubLocalAuth": {"db_url": "the db-url Secret: twinhub.database"},
    "TwinhubDataLake": {"database_url": "the db-url Secret: twinhub.database"},
    "TwinhubKeycloak": {
        "client_secret": "keycloak-client-secret in twinhub-secrets (or twinhub.existingSecret)"
    },
    "TwinhubObjectStore": {
        "admin_access_key": "access-key in twinhub.s3.existingSecret",
        "admin_secret_key": "secret-key in twinhub.s3.existingSecret",
    },
}

#: A string trait whose name says it holds a secret is refused too, even when it is not
#: listed above (a new trait cannot leak into the ConfigMap by being forgotten here).
SECRET_NAME = re.compile(r"secret|password|passwd|token|credential|(^|_)(key|db_url|database_url)$")


def secret_traits(cls: type) -> dict[str, str]:
    """The traits of ``cls`` the schema refuses as secrets, with where each goes instead
    (a trait the chart sets itself, e.g. a path to a mounted Secret, is the chart's)."""
    known = dict(SECRET_TRAITS.get(cls.__name__, {}))
    owned = CHART_OWNED.get(cls.__name__, {})
    for name, trait in cls.class_traits(config=True).items():
        if name in known or name in owned:
            continue
        if isinstance(trait, Unicode) and SECRET_NAME.search(name):
            known[name] = "a mounted Secret (it holds a secret: not in the ConfigMap)"
    return known


def trait_schema(trait: TraitType) -> dict[str, Any]:
    """JSON schema of one trait's value as YAML can give it."""
    out: dict[str, Any]
    if isinstance(trait, Enum):
        out = {"enum": list(trait.values or [])}
        if trait.allow_none:
            out["enum"].append(None)
    else:
        if isinstance(trait, Bool):
            kind = "boolean"
        elif isinstance(trait, Int):
            kind = "integer"
        elif isinstance(trait, Float):
            kind = "number"  # YAML's 1 is an integer, which traitlets' Float accepts
        elif isinstance(trait, Unicode):
            kind = "string"
        elif isinstance(trait, (List, Set, Tuple)):
            kind = "array"
        elif isinstance(trait, Dict):
            kind = "object"
        elif isinstance(trait, AnyTrait):
            kind = ""
        else:
            raise SystemExit(f"no JSON type for trait {trait.name!r} ({type(trait).__name__})")
        out = {}
        if kind:
            out["type"] = [kind, "null"] if trait.allow_none else kind
        if isinstance(trait, (Int, Float)):
            # Float's unbounded default is +-inf, which JSON cannot hold.
            low, high = getattr(trait, "min", None), getattr(trait, "max", None)
            if low is not None and math.isfinite(low):
                out["minimum"] = low
            if high is not None and math.isfinite(high):
                out["maximum"] = high
    help_text = " ".join((trait.help or "").split())
    if help_text:
        out["description"] = help_text
    return out


def config_schema() -> dict[str, Any]:
    """The schema of `twinhub.config`."""
    sections = {}
    for cls in config_classes():
        owned = CHART_OWNED.get(cls.__name__, {})
        # A renamed trait would otherwise pass into the schema unowned, the chart's value
        # silently ignored by the class.
        unknown = set(owned) - set(cls.class_traits(config=True))
        if unknown:
            raise SystemExit(f"CHART_OWNED names traits {cls.__name__} lacks: {sorted(unknown)}")
        secret = secret_traits(cls)
        traits = {
            name: trait_schema(trait)
            for name, trait in sorted(cls.class_traits(config=True).items())
            if name not in owned and name not in secret
        }
        doc = " ".join((cls.__doc__ or "").split())
        if owned:
            doc += " Set by the chart instead: " + ", ".join(
                f"{name} ({where})" for name, where in sorted(owned.items())
            )
        if secret:
            doc += " Secrets, never here (this is rendered into a ConfigMap): " + ", ".join(
                f"{name} ({where})" for name, where in sorted(secret.items())
            )
        sections[cls.__name__] = {
            "type": "object",
            "additionalProperties": False,
            "description": doc.strip(),
            "properties": traits,
        }
    return {
        "$comment": "Generated by helm/twinhub/schema/gen_config_schema.py: do not edit by hand.",
        "type": "object",
        "additionalProperties": False,
        "description": "Traitlets configuration of twinhub's own classes, as in "
        "twinhub_config.py (section -> trait -> value).",
        "properties": dict(sorted(sections.items())),
    }


def kubespawner_override_schema() -> dict[str, Any]:
    """The schema of a profile's `kubespawner_override`: the config traits of the chart's
    spawner (TwinhubKubeSpawner, a KubeSpawner); their values are the spawner's to check
    (several take callables or several shapes)."""
    names = sorted(TwinhubKubeSpawner.class_traits(config=True))
    return {
        "$comment": "Generated by helm/twinhub/schema/gen_config_schema.py: do not edit by hand.",
        "type": "object",
        "additionalProperties": False,
        "description": "Spawner options for this profile (TwinhubKubeSpawner's config traits).",
        "properties": {name: {} for name in names},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when out of date")
    args = parser.parse_args(argv)
    schema = json.loads(SCHEMA.read_text())
    schema["properties"]["twinhub"]["properties"]["config"] = config_schema()
    schema["definitions"]["kubespawnerOverride"] = kubespawner_override_schema()
    text = json.dumps(schema, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if args.check:
        if SCHEMA.read_text() != text:
            print(f"{SCHEMA} is out of date: run {__file__}", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
