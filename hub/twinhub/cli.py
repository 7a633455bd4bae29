"""The ``twinhub`` command line.

The command line is a contract other tools (tests, CI, docs) rely on::

    twinhub up [--state DIR] [--ip ADDR] [--port N] [--mode personal|multi-user] [--config FILE]
               [--keycloak-url URL --keycloak-client-id ID --keycloak-client-secret SECRET]
    twinhub down [--state DIR] [--purge-users]
    twinhub status [--state DIR]
    twinhub user add NAME [--admin] [--group G ...] [--state DIR]
    twinhub user token NAME [--state DIR]
    twinhub user link NAME [--state DIR]
    twinhub user list [--json] [--state DIR]
    twinhub usage [--user U] [--project P [--by-member]] [--since T] [--until T] [--step S]
                  [--json] [--state DIR]           (operators: reads the database directly)
    twinhub login --hub URL [--no-browser]     (token for scripts, Keycloak device flow)
    twinhub logout

Every option of every configurable can also be set in ``<state>/twinhub_config.py``
(generated on first run) or on the command line as ``--Class.trait=value``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from traitlets.config import Config
from traitlets.config.loader import KVArgParseConfigLoader

from . import __version__
from .errors import PlatformError

# Each command imports what it runs inside its function: `twinhub login` on a laptop, or
# `twinhub status`, must not load the whole platform (JupyterHub, SQLAlchemy, every part).

DEFAULT_STATE = os.environ.get("TWINHUB_STATE_DIR", ".twinhub")


class CLIError(Exception):
    """An error the user must fix; printed without a traceback."""


def _config_help() -> str:
    from .parts import config_classes  # every part: only for --help-all

    lines = ["configuration options (twinhub_config.py, or --Class.trait=value here):", ""]
    for cls in config_classes():
        lines.append(cls.class_get_help())
    return "\n".join(lines)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        default=DEFAULT_STATE,
        metavar="DIR",
        help="platform state directory (default: %(default)s, or $TWINHUB_STATE_DIR)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinhub",
        description="Run the twinhub platform (JupyterHub + Dask Gateway + services).",
    )
    parser.add_argument("--version", action="version", version=f"twinhub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="start the embedded platform in the foreground",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Start hub, proxy, Dask Gateway and services as local processes; print the "
        "URL once the hub answers; stop everything on Ctrl-C or SIGTERM.",
        epilog=_config_help(),
    )
    _state_arg(up)
    up.add_argument("--ip", help="address the proxy listens on (Twinhub.ip, default 127.0.0.1)")
    up.add_argument(
        "--port", type=int, help="port the proxy listens on (Twinhub.port, default 8000)"
    )
    up.add_argument(
        "--mode",
        choices=["personal", "multi-user"],
        help="personal (all servers as you) or multi-user (an OS account per user; "
        "default when run as root)",
    )
    up.add_argument("--public-url", help="URL users reach the platform at (Twinhub.public_url)")
    up.add_argument("--db-url", help="SQLAlchemy URL of twinhub's own tables (Twinhub.db_url)")
    up.add_argument("--config", help="config file (default: <state>/twinhub_config.py)")
    up.add_argument(
        "--keycloak-url",
        help="log in through this Keycloak realm, https://host/realms/<realm> (TwinhubKeycloak.url)",
    )
    up.add_argument("--keycloak-client-id", help="the hub's client id in the realm")
    up.add_argument(
        "--keycloak-client-secret",
        help="the client's secret (better: $TWINHUB_KEYCLOAK_CLIENT_SECRET); kept in a 0600 file",
    )

    up.add_argument(
        "--stac-source",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="federate another STAC API or static catalogue (catalog.json URL) into the lake's "
        "search; repeatable; added to TwinhubDataLake.sources",
    )

    down = sub.add_parser("down", help="stop a platform started with `twinhub up`")
    _state_arg(down)
    down.add_argument(
        "--purge-users",
        action="store_true",
        help="also remove the OS accounts created for platform users (multi-user mode)",
    )

    status = sub.add_parser(
        "status",
        help="show each component with state, pid, port, health, restart count and last exit "
        "(also when `twinhub up` itself died and left them running)",
    )
    _state_arg(status)

    user = sub.add_parser("user", help="manage platform accounts")
    usub = user.add_subparsers(dest="user_command", required=True)
    add = usub.add_parser("add", help="create an account and print its generated password once")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="make the account an admin")
    add.add_argument("--group", action="append", default=[], metavar="G", help="add to group G")
    _state_arg(add)
    tok = usub.add_parser("token", help="print a JupyterHub API token for a user (admin use)")
    tok.add_argument("name")
    _state_arg(tok)
    link = usub.add_parser(
        "link",
        help="print a one-time set-password link for a user (one made on the admin page, or "
        "a password reset); it expires after TwinhubLocalAuth.set_password_link_hours",
    )
    link.add_argument("name")
    _state_arg(link)
    lst = usub.add_parser("list", help="list accounts")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    _state_arg(lst)
    data = sub.add_parser("data", help="the data lake's sample data")
    dsub = data.add_subparsers(dest="data_command", required=True)
    seed = dsub.add_parser(
        "seed",
        help="build the Climate-DT-like sample data (reused once built) and, when the platform "
        "of --state runs, load it into its lake and STAC API",
    )
    seed.add_argument(
        "--size", default="small", help="small (default, < 1 min), medium or large (benchmarks)"
    )
    seed.add_argument("--cache-dir", default=None, help="where builds are kept (default: cache)")
    _state_arg(seed)
    usage = sub.add_parser(
        "usage",
        help="metered usage (CPU, memory, GPU, Dask workers, storage, energy, CO2e) of a user "
        "or a project, or of everyone, read from the platform's database (operators)",
        description="Without --user or --project: all-time (or --since/--until, in whole "
        "days) totals of every user in every project. With them: the usage API's answer "
        "(totals, methods, series by --step, the project's budgets).",
    )
    usage.add_argument("--user", metavar="U", help="this user's usage")
    usage.add_argument("--project", metavar="P", help="this project's usage (and budgets)")
    usage.add_argument(
        "--by-member", action="store_true", help="with --project: one series per member"
    )
    usage.add_argument(
        "--since", metavar="T", help="from T: ISO 8601 (2026-01-31, 2026-01-31T12:00Z) or ago (7d)"
    )
    usage.add_argument("--until", metavar="T", help="up to T (same forms; default: now)")
    usage.add_argument("--step", metavar="S", help="series step: hour, day, month or seconds")
    usage.add_argument("--json", action="store_true", help="machine-readable output")
    _state_arg(usage)
    login = sub.add_parser(
        "login",
        help="get a JupyterHub API token for scripts and CLIs (Keycloak device login); "
        "stored 0600 in ~/.config/twinhub/token.json or $TWINHUB_TOKEN_FILE",
    )
    login.add_argument("--hub", required=True, metavar="URL", help="the platform's URL")
    login.add_argument(
        "--no-browser", action="store_true", help="only print the URL and code to open"
    )
    sub.add_parser("logout", help="revoke the token `twinhub login` stored and remove it")
    service = sub.add_parser("service", help="run one hub service (Kubernetes pods)")
    ssub = service.add_subparsers(dest="service_command", required=True)
    run = ssub.add_parser(
        "run",
        help="the process of a service's pod: load $TWINHUB_STATE/run/runtime.json, migrate, "
        "prepare the service, then serve it on 0.0.0.0 (its port in runtime.json)",
    )
    run.add_argument("name", help="the service (stac, cache, projects, accounting...)")
    return parser


def cmd_service(args: argparse.Namespace) -> int:
    # per command (see the top): the service's part, found in the one list of parts
    from .errors import StartError
    from .parts import load
    from .process.runtime import RUNTIME_FILE, Runtime
    from .services.base import AsgiService

    if not os.environ.get("TWINHUB_STATE"):
        raise CLIError("$TWINHUB_STATE is not set (the directory holding run/runtime.json)")
    try:
        rt = Runtime.load()
    except FileNotFoundError as e:
        raise CLIError(f"no {RUNTIME_FILE} in $TWINHUB_STATE: {e}") from None
    services = {p.name: p for p in load() if isinstance(p, AsgiService)}
    part = services.get(args.name)
    if part is None:
        raise CLIError(f"unknown service {args.name!r}; services: {', '.join(sorted(services))}")
    try:
        part.serve(rt)  # returns only by an error: it becomes uvicorn
    except StartError as e:  # a check of the service's prepare: one line, no traceback
        raise CLIError(str(e)) from None
    return 1


def cmd_login(args: argparse.Namespace) -> int:
    from .client.login import LoginError, login, logout  # the laptop's command: nothing else

    def progress(left: float) -> None:
        print(
            f"\rwaiting for you to confirm in the browser ({left:.0f} s left)...  ",
            end="",
            file=sys.stderr,
            flush=True,
        )

    try:
        if args.command == "logout":
            logout()
            return 0
        try:
            login(args.hub, open_browser=not args.no_browser, progress=progress)
        finally:
            print(file=sys.stderr)
    except LoginError as e:
        raise CLIError(str(e)) from e
    return 0


def _overrides(args: argparse.Namespace, extra: list[str]) -> Config:
    cfg = Config()
    if extra:
        bad = [a for a in extra if not a.startswith("--") or "." not in a.split("=")[0]]
        if bad:
            raise CLIError(f"unrecognized arguments: {' '.join(bad)}")
        cfg.merge(KVArgParseConfigLoader(extra).load_config())
    for opt, trait in [
        ("ip", "ip"),
        ("port", "port"),
        ("mode", "mode"),
        ("public_url", "public_url"),
        ("db_url", "db_url"),
    ]:
        value = getattr(args, opt, None)
        if value is not None:
            setattr(cfg.Twinhub, trait, value)
    for opt, trait in [
        ("keycloak_url", "url"),
        ("keycloak_client_id", "client_id"),
        ("keycloak_client_secret", "client_secret"),
    ]:
        value = getattr(args, opt, None)
        if value is not None:
            setattr(cfg.TwinhubKeycloak, trait, value)
    if getattr(args, "stac_source", None):
        # the data lake package: only when a source is given
        from .services.datalake.sources import SourceError, parse_source_arg

        try:
            specs = [parse_source_arg(a) for a in args.stac_source]
        except SourceError as e:
            raise CLIError(str(e)) from None
        # extend, not replace: sources from twinhub_config.py stay
        cfg.TwinhubDataLake.sources.extend(specs)
    return cfg


def cmd_up(args: argparse.Namespace, extra: list[str]) -> int:
    from .platform import up  # per command (see the top)

    if args.port is not None and not 0 < args.port < 65536:
        raise CLIError(f"--port {args.port} is not a valid port (1-65535)")
    return up(Path(args.state), _overrides(args, extra), config_file=args.config)


def cmd_down(args: argparse.Namespace) -> int:
    from .platform import down, load_runtime  # per command (see the top)

    code = down(Path(args.state))
    if args.purge_users:
        from .spawn.os_accounts import purge_accounts  # only with --purge-users
        from .spawn.resource_limits import remove_accounting_group  # only with --purge-users

        rt = load_runtime(Path(args.state))
        removed = purge_accounts(rt)
        # Usage nobody will read any more: the accounting cgroups go with the accounts.
        remove_accounting_group(f"twinhub-{rt.instance_id}-acct")
        print(f"removed OS accounts: {', '.join(removed) if removed else 'none'}")
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from .platform import status  # per command (see the top)

    return status(Path(args.state))


def cmd_data(args: argparse.Namespace) -> int:
    # per command (see the top)
    from .platform import load_runtime
    from .process.supervisor import supervisor_pid
    from .services.datalake import SEED_SIZES, StacPart, seed_into
    from .services.datalake.seed import build

    if args.size not in SEED_SIZES:
        raise CLIError(f"--size must be one of {', '.join(SEED_SIZES)}, got {args.size!r}")

    state = Path(args.state)
    rt = load_runtime(state) if (state / "run" / "runtime.json").exists() else None
    if rt is None or not supervisor_pid(rt):
        cache = Path(args.cache_dir) if args.cache_dir else None
        b = build(args.size, cache_dir=cache, progress=print)
        print(f"sample data ({args.size}) built in {b.root}")
        print(f"(no platform running for {state}: `twinhub up` loads it on first start)")
        return 0
    if not StacPart().active(rt):
        raise CLIError(f"the platform of {state} runs without the data lake (TwinhubDataLake)")
    if args.cache_dir:
        rt.config.TwinhubDataLake.seed_cache_dir = args.cache_dir
    r = seed_into(rt, args.size, print)
    print(f"sample data ({args.size}) loaded: {r['items']} items, {r['bytes_uploaded']} bytes sent")
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    # per command (see the top)
    from .client.hubapi import HubAPIError, hub_request
    from .platform import load_runtime

    rt = load_runtime(Path(args.state))
    try:
        if args.user_command == "add":
            return _user_add(rt, args)
        if args.user_command == "token":
            hub_request(rt, "GET", f"/users/{args.name}")
            reply = hub_request(
                rt, "POST", f"/users/{args.name}/tokens", {"note": "twinhub user token"}
            )
            print(reply["token"])
            return 0
        if args.user_command == "list":
            return _user_list(rt, args)
        if args.user_command == "link":
            return _user_link(rt, args)
    except HubAPIError as e:
        if e.status == 404:
            raise CLIError(f"no such user: {args.name}") from e
        raise CLIError(str(e)) from e
    raise CLIError(f"unknown user command {args.user_command}")


def cmd_usage(args: argparse.Namespace) -> int:
    # per command (see the top)
    from .db.schema import DatabaseError, check_schema
    from .platform import load_runtime
    from .services.accounting import report
    from .services.projects.catalog import ProjectCatalog

    if args.by_member and not args.project:
        raise CLIError("--by-member needs --project")
    try:
        start = report.parse_since(args.since) if args.since else None
        end = report.parse_since(args.until) if args.until else None
    except ValueError as e:
        raise CLIError(str(e)) from None
    rt = load_runtime(Path(args.state))
    try:
        check_schema(rt.db_url)  # a platform not upgraded yet: say so, not a traceback
        if not args.user and not args.project:
            if args.step:
                raise CLIError("--step needs --user or --project (a series is of one scope)")
            rows = report.everyone(rt.db_url, start, end)
            print(json.dumps(rows, indent=2) if args.json else report.everyone_table(rows))
            return 0
        doc = report.one(
            rt.db_url,
            user=args.user,
            project=args.project,
            start=start,
            end=end,
            step=args.step,
            by_member=args.by_member,
            allocations=ProjectCatalog.from_runtime(rt).allocations(),
        )
    except (ValueError, DatabaseError) as e:  # a bad step or range; an old schema
        raise CLIError(str(e)) from None
    print(json.dumps(doc, indent=2) if args.json else report.table(doc))
    return 0


def _user_add(rt, args: argparse.Namespace) -> int:
    # per command (see the top)
    from .auth.local_accounts import create_account, delete_account, get_account
    from .auth.realm import TwinhubKeycloak, enabled
    from .client.hubapi import HubAPIError, hub_request
    from .config import Twinhub
    from .spawn.os_accounts import RESERVED_NAMES

    if enabled(rt.config):
        url = TwinhubKeycloak(config=rt.config).url
        raise CLIError(
            f"accounts are managed in Keycloak ({url}): create {args.name!r} there "
            "(and add them to groups there); they appear here at their first login"
        )
    name = args.name
    if name in RESERVED_NAMES:
        raise CLIError(f"user name {name!r} is reserved; choose another name")
    # An existing name changes nothing: not its password, not its hub account.
    if get_account(rt.db_url, name) is not None or _hub_user_exists(rt, name):
        raise CLIError(f"user {name!r} already exists; nothing was changed")
    try:
        password = create_account(
            rt.db_url, name, admin=args.admin, prefix=Twinhub(config=rt.config).user_prefix
        )
    except ValueError as e:
        raise CLIError(str(e)) from e
    try:
        hub_request(rt, "POST", f"/users/{name}", {"admin": args.admin} if args.admin else None)
    except HubAPIError:
        delete_account(rt.db_url, name)  # made by someone else meanwhile: leave theirs
        raise
    for group in args.group:
        try:
            hub_request(rt, "POST", f"/groups/{group}")
        except Exception as e:  # already exists
            if getattr(e, "status", None) != 409:
                raise
        hub_request(rt, "POST", f"/groups/{group}/users", {"users": [name]})
    print(f"created {'admin ' if args.admin else ''}user {name}")
    print(f"password: {password}")
    print("(shown once: pass it on securely)")
    return 0


def _user_link(rt, args: argparse.Namespace) -> int:
    from .auth.realm import enabled  # per command (see the top)
    from .client.hubapi import hub_request

    if enabled(rt.config):
        raise CLIError("accounts are managed in Keycloak: passwords are set there")
    reply = hub_request(rt, "POST", f"/twinhub/users/{quote(args.name, safe='')}/set-password-link")
    # The hub names the address the request came to (its own, internal one here): the
    # link the user opens goes through the platform's public URL.
    query = reply["url"].split("?", 1)[1]
    print(f"{rt.url}hub/set-password?{query}")
    print(f"(one use, expires {reply['expires_at']}: pass it on securely)")
    if not rt.public_url:
        print(
            f"note: no public URL is configured (Twinhub.public_url, `twinhub up --public-url`): "
            f"the link names {rt.url}, which only works where that address reaches the platform",
            file=sys.stderr,
        )
    return 0


def _hub_user_exists(rt, name: str) -> bool:
    from .client.hubapi import HubAPIError, hub_request  # per command (see the top)

    try:
        hub_request(rt, "GET", f"/users/{quote(name, safe='')}")
    except HubAPIError as e:
        if e.status == 404:
            return False
        raise
    return True


def _user_list(rt, args: argparse.Namespace) -> int:
    from .client.hubapi import hub_request  # per command (see the top)

    users = hub_request(rt, "GET", "/users")
    rows = [
        {
            "name": u["name"],
            "admin": u.get("admin", False),
            "groups": u.get("groups", []),
            "server": bool(u.get("servers", {}).get("", {}).get("ready")),
            "last_activity": u.get("last_activity"),
        }
        for u in users
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            flags = ("admin " if r["admin"] else "") + ("running" if r["server"] else "")
            print(f"{r['name']:<24} {flags:<14} {','.join(r['groups'])}")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "up":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "up":
            code = cmd_up(args, extra)
        elif args.command == "down":
            code = cmd_down(args)
        elif args.command == "status":
            code = cmd_status(args)
        elif args.command == "data":
            code = cmd_data(args)
        elif args.command == "usage":
            code = cmd_usage(args)
        elif args.command in ("login", "logout"):
            code = cmd_login(args)
        elif args.command == "service":
            code = cmd_service(args)
        else:
            code = cmd_user(args)
    except (CLIError, PlatformError) as e:
        print(f"twinhub: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
