"""``twinhub login --hub URL``: a JupyterHub API token for scripts, without scraping a page.

1. ``GET <hub>/hub/api/twinhub/login-config``: the realm's device authorization and token
   endpoints and the CLI's public client (or: this hub has local accounts, use its token page);
2. OAuth 2.0 device authorization grant (RFC 8628) with Keycloak: print the verification URL
   and user code (and open a browser unless ``--no-browser``), poll the token endpoint at the
   ``interval`` it asks for, 5 s slower after each ``slow_down``;
3. ``POST <hub>/hub/api/twinhub/token-exchange`` with the Keycloak access token: the hub
   applies its login rules and answers a JupyterHub token;
4. store it in ``~/.config/twinhub/token.json`` (or ``$TWINHUB_TOKEN_FILE``), created 0600.

See docs/keycloak.md ("Tokens for scripts: twinhub login").
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

TOKEN_FILE_ENV = "TWINHUB_TOKEN_FILE"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# RFC 8628 section 3.5: after slow_down, poll this much slower for the rest of the flow.
SLOW_DOWN_STEP = 5.0


class LoginError(RuntimeError):
    """Login failed; the message says why and what to do."""


def token_file() -> Path:
    """Where the token is kept: ``$TWINHUB_TOKEN_FILE`` or ``~/.config/twinhub/token.json``."""
    env = os.environ.get(TOKEN_FILE_ENV)
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "twinhub" / "token.json"


def hub_base(url: str) -> str:
    """``http://host[:port][/prefix]/`` from what a user may type (with or without /hub)."""
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise LoginError(f"--hub must be the platform's URL (http[s]://host[:port]/), got {url!r}")
    url = url.rstrip("/")
    if url.endswith("/hub"):
        url = url[: -len("/hub")]
    return url + "/"


def _json(r: requests.Response, what: str) -> dict:
    try:
        body = r.json()
    except ValueError as e:
        raise LoginError(f"{what} answered {r.status_code} without JSON: {r.text[:200]!r}") from e
    if not isinstance(body, dict):
        raise LoginError(f"{what} answered unexpected JSON: {body!r}")
    return body


def get_login_config(hub: str, session: requests.Session, timeout: float = 15) -> dict:
    """The hub's login-config; LoginError when the hub is unreachable or not in Keycloak mode."""
    url = hub + "hub/api/twinhub/login-config"
    try:
        r = session.get(url, timeout=timeout)
    except requests.RequestException as e:
        raise LoginError(f"cannot reach the hub at {hub}: {e}") from e
    if r.status_code == 404:
        raise LoginError(f"{hub} has no twinhub login endpoint ({url} not found): is it twinhub?")
    if r.status_code != 200:
        raise LoginError(f"{url} answered {r.status_code}: {r.text[:200]}")
    cfg = _json(r, url)
    if cfg.get("mode") != "keycloak":
        page = hub.rstrip("/") + cfg.get("token_page", "/hub/token")
        raise LoginError(
            f"{hub} uses local accounts, not Keycloak, so there is no device login: sign in in a "
            f"browser and create a token at {page}"
        )
    if not cfg.get("device_login", True):
        page = hub.rstrip("/") + cfg.get("token_page", "/hub/token")
        raise LoginError(
            f"{hub}: {cfg.get('message') or 'device login is off'} Sign in in a browser and "
            f"create a token at {page}"
        )
    missing = [
        k
        for k in ("client_id", "device_authorization_endpoint", "token_endpoint")
        if not cfg.get(k)
    ]
    if missing:
        raise LoginError(f"{url} lacks {', '.join(missing)}")
    return cfg


def start_device_flow(cfg: dict, session: requests.Session, timeout: float = 15) -> dict:
    """The device authorization response: device_code, user_code, verification_uri[...]."""
    ep = cfg["device_authorization_endpoint"]
    try:
        r = session.post(
            ep,
            data={"client_id": cfg["client_id"], "scope": cfg.get("scope") or "openid"},
            timeout=timeout,
        )
    except requests.RequestException as e:
        raise LoginError(f"cannot reach Keycloak at {ep}: {e}") from e
    body = _json(r, ep)
    if r.status_code != 200 or "device_code" not in body:
        why = body.get("error_description") or body.get("error") or r.text[:200]
        raise LoginError(
            f"Keycloak refused to start the device login for client {cfg['client_id']!r}: {why} "
            "(is 'OAuth 2.0 Device Authorization Grant' enabled on that client?)"
        )
    return body


def poll_for_token(
    cfg: dict,
    device: dict,
    session: requests.Session,
    *,
    progress: Callable[[float], None] = lambda left: None,
    slow_down_step: float = SLOW_DOWN_STEP,
    timeout: float = 15,
) -> dict:
    """Poll the token endpoint until the user confirms, denies, or the code expires.

    Honours ``interval`` (default 5 s, RFC 8628) and ``slow_down`` (``slow_down_step`` more
    each time). ``progress(seconds_left)`` is called before each wait."""
    interval = float(device.get("interval") or 5)
    expires_in = float(device.get("expires_in") or 600)
    deadline = time.monotonic() + expires_in
    code = device.get("user_code", "")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _expired(code, expires_in)
        progress(left)
        time.sleep(min(interval, max(left, 0.0)))
        try:
            r = session.post(
                cfg["token_endpoint"],
                data={
                    "grant_type": DEVICE_GRANT,
                    "device_code": device["device_code"],
                    "client_id": cfg["client_id"],
                },
                timeout=timeout,
            )
        except requests.RequestException as e:
            raise LoginError(f"cannot reach Keycloak at {cfg['token_endpoint']}: {e}") from e
        body = _json(r, cfg["token_endpoint"])
        if r.status_code == 200 and body.get("access_token"):
            return body
        error = body.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += slow_down_step
            continue
        if error == "access_denied":
            raise LoginError(
                f"the login with code {code} was denied in the browser: nothing was stored. "
                "Run `twinhub login` again to retry."
            )
        if error == "expired_token":
            raise _expired(code, expires_in)
        raise LoginError(
            f"Keycloak refused the device login: {body.get('error_description') or error or r.text}"
        )


def _expired(code: str, expires_in: float) -> LoginError:
    return LoginError(
        f"the code {code} expired before it was confirmed (it was valid for {expires_in:.0f} s): "
        "run `twinhub login` again and confirm the new code in time."
    )


def exchange(
    hub: str, cfg: dict, access_token: str, session: requests.Session, timeout: float = 30
) -> dict:
    """The hub's token-exchange: Keycloak access token in, JupyterHub token record out."""
    path = cfg.get("token_exchange_path") or "/hub/api/twinhub/token-exchange"
    url = hub.rstrip("/") + path
    try:
        r = session.post(url, headers={"Authorization": f"Bearer {access_token}"}, timeout=timeout)
    except requests.RequestException as e:
        raise LoginError(f"cannot reach the hub at {hub}: {e}") from e
    body = _json(r, url)
    if r.status_code != 200 or not body.get("token"):
        raise LoginError(
            f"the hub refused the login ({r.status_code}): {body.get('message') or r.text[:300]}"
        )
    return body


def save_token(record: dict, path: Path | None = None) -> Path:
    """Write ``record`` as JSON to ``path`` (default :func:`token_file`), mode 0600 from the
    start: a 0600 temporary file in the same directory, then renamed over the old one."""
    path = path or token_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_token(path: Path | None = None) -> dict:
    path = path or token_file()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise LoginError(f"no token stored at {path}: run `twinhub login --hub URL`") from e
    except ValueError as e:
        raise LoginError(f"{path} is not a twinhub token file: {e}") from e


def usage(hub: str, record: dict, path: Path) -> str:
    """How to use the stored token with the hub API, Dask Gateway and the data lake."""
    load = f"TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"token\"])' {path})"
    gateway = (
        "JUPYTERHUB_API_TOKEN=$TOKEN python3 -c 'from dask_gateway import Gateway; "
        f'print(Gateway("{hub}services/dask-gateway", auth="jupyterhub").list_clusters())\''
    )
    until = record.get("expires_at") or "never (revoke it on the hub's token page)"
    return "\n".join(
        [
            f"Logged in to {hub} as {record['user']}.",
            f"Token saved to {path} (mode 600), expires: {until}.",
            "",
            "Use it:",
            f"  {load}",
            "  # JupyterHub REST API",
            f'  curl -H "Authorization: token $TOKEN" {hub}hub/api/user',
            "  # Dask Gateway",
            f"  {gateway}",
            "  # data lake STAC API",
            f'  curl -H "Authorization: token $TOKEN" {hub}services/stac/collections',
        ]
    )


def login(
    hub_url: str,
    *,
    open_browser: bool = True,
    out: Callable[[str], None] = print,
    progress: Callable[[float], None] = lambda left: None,
    path: Path | None = None,
    slow_down_step: float = SLOW_DOWN_STEP,
) -> dict[str, Any]:
    """The whole login; returns the stored record (with ``path``)."""
    hub = hub_base(hub_url)
    with requests.Session() as s:
        cfg = get_login_config(hub, s)
        device = start_device_flow(cfg, s)
        where = device.get("verification_uri_complete") or device["verification_uri"]
        out(
            f"To log in, open {device['verification_uri']} and enter the code {device['user_code']}"
        )
        out(f"  (or open {where})")
        if open_browser:
            import webbrowser

            webbrowser.open(where)
        tokens = poll_for_token(cfg, device, s, progress=progress, slow_down_step=slow_down_step)
        got = exchange(hub, cfg, tokens["access_token"], s)
    record = {
        "hub": hub,
        "user": got["user"],
        "token": got["token"],
        "expires_at": got.get("expires_at"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        stored = save_token(record, path)
    except OSError as e:
        raise LoginError(
            f"cannot store the token in {path or token_file()}: {e} (set ${TOKEN_FILE_ENV} "
            "to a writable place; the token issued now is unused, it expires by itself)"
        ) from e
    out(usage(hub, record, stored))
    return {**record, "path": str(stored)}


def logout(path: Path | None = None, out: Callable[[str], None] = print) -> None:
    """Revoke the stored token at its hub (best effort when the hub is gone) and remove it."""
    path = path or token_file()
    record = load_token(path)
    headers = {"Authorization": f"token {record['token']}"}
    api = record["hub"] + "hub/api"
    try:
        me = requests.get(api + "/user", headers=headers, timeout=15)
        if me.status_code == 200:
            token_id = (me.json() or {}).get("token_id")
            if token_id:
                user = record["user"]
                requests.delete(
                    f"{api}/users/{user}/tokens/{token_id}", headers=headers, timeout=15
                ).raise_for_status()
                out(f"revoked the token at {record['hub']}")
    except requests.RequestException as e:
        out(f"could not revoke the token at {record['hub']} ({e}); removing it here anyway")
    path.unlink()
    out(f"removed {path}")
