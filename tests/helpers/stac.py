"""STAC documents the tests write to the platform's STAC API."""

from __future__ import annotations


def collection(cid: str, **extra) -> dict:
    """A minimal valid STAC 1.1 collection ``cid`` (global, open-ended), plus ``extra``."""
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.1.0",
        "description": f"test collection {cid}",
        "license": "CC-BY-4.0",
        "extent": {
            "spatial": {"bbox": [[-180, -90, 180, 90]]},
            "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
        },
        "links": [],
        **extra,
    }
