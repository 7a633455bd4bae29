"""Cost of the request-limits layer's JSON depth scan (twinhub.services.asgi.json_depth).

    /opt/twinhub/venv/bin/python bench/asgi_limits.py [--mb 16] [--repeat 3]

Every body a service takes is scanned before any parser sees it, so the scan must cost
less than the parse it protects.  For bodies of ``--mb`` MB of several shapes (a GeoJSON
FeatureCollection, many strings, escapes, a flat array of small arrays, and the attack:
nothing but brackets), prints the scan's best time of ``--repeat`` and the ratio to
``json.loads`` of the same body (the anchor; for the attack, of the valid GeoJSON body of
the same size, since json.loads of the attack recurses).  Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "hub"))

from twinhub.services.asgi import MAX_JSON_DEPTH, json_depth  # noqa: E402


def geojson(size: int) -> bytes:
    rng = random.Random(1)
    parts, n = [], 0
    while n < size:
        ring = [[rng.uniform(-180, 180), rng.uniform(-90, 90)] for _ in range(50)]
        f = {
            "type": "Feature",
            "id": f"item-{len(parts)}",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"datetime": "2020-01-01T00:00:00Z", "title": "a [b] {c}"},
        }
        s = json.dumps(f)
        parts.append(s)
        n += len(s) + 1
    return ('{"type":"FeatureCollection","features":[' + ",".join(parts) + "]}").encode()


def best(fn, body: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(body)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = int(args.mb * 1024 * 1024)
    gj = geojson(size)
    bodies = {
        "geojson": gj,
        "strings": b"[" + b",".join([b'"' + b"s" * 100 + b'"'] * (size // 103)) + b"]",
        "escapes": b"[" + b",".join([b'"a\\"b\\\\c[d"'] * (size // 13)) + b"]",
        "small arrays": b"[" + b",".join([b"[1]"] * (size // 4)) + b"]",
        "brackets (attack)": b"[" * (size // 2) + b"]" * (size // 2),
    }
    anchor_gj = best(json.loads, gj, args.repeat)
    print(f"json_depth(stop_at={MAX_JSON_DEPTH}) on {args.mb:g} MB bodies, best of {args.repeat}")
    print(f"{'body':<20}{'scan s':>9}{'json.loads s':>14}{'ratio':>8}")
    for name, body in bodies.items():
        scan = best(lambda b: json_depth(b, stop_at=MAX_JSON_DEPTH), body, args.repeat)
        anchor = anchor_gj if "attack" in name else best(json.loads, body, args.repeat)
        print(f"{name:<20}{scan:>9.3f}{anchor:>14.3f}{scan / anchor:>8.2f}")


if __name__ == "__main__":
    main()
