"""The ``dealflow`` command: ``dev``, ``api``, ``worker``, ``migrate`` and ``keys``."""

from __future__ import annotations

import argparse
import sys


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.app import create_app
    from dealflow.logs import setup_logging
    from dealflow.settings import load_settings
    from store.migrate import upgrade

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format, "api")
    upgrade(settings.effective_database_url)  # before uvicorn: a clear error, not a traceback
    app = create_app(settings, run_migrations=False)
    uvicorn.run(
        app,
        host=args.host or settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        proxy_headers=False,
    )
    return 0


def _worker(_: argparse.Namespace) -> int:
    import worker

    worker.main()
    return 0


def _dev(_: argparse.Namespace) -> int:
    from dealflow.settings import load_settings
    from dealflow.supervisor import run_dev

    return run_dev(load_settings())


def _migrate(_: argparse.Namespace) -> int:
    from dealflow.settings import load_settings
    from store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.effective_database_url)
    print(f"database at {settings.effective_database_url.split('@')[-1]} is up to date")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from dealflow.settings import load_settings
    from store.db import Database
    from store.keys import create_key
    from store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.effective_database_url)
    row, key = create_key(
        Database(settings.effective_database_url),
        name=args.name or f"{args.role} key for {args.subject}",
        role=args.role,
        subject=args.subject,
    )
    print(key)
    print(
        f"created {row.id} ({row.role}, subject {row.subject}); the key is shown once",
        file=sys.stderr,
    )
    return 0


def _keys_list(_: argparse.Namespace) -> int:
    from dealflow.settings import load_settings
    from store.db import Database
    from store.keys import list_keys
    from store.migrate import upgrade

    settings = load_settings()
    upgrade(settings.effective_database_url)
    for row in list_keys(Database(settings.effective_database_url)):
        state = "revoked" if row.revoked_at else "active"
        print(f"{row.id}\t{row.role}\t{row.subject}\t{row.prefix}…\t{state}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    """Print curl -H arguments that sign BODY the way a sender of SCHEME would."""
    import time
    import uuid

    from domain.signatures import sign

    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode()
    try:
        headers = sign(
            args.scheme,
            args.secret,
            body,
            delivery_id=args.id or f"msg_{uuid.uuid4().hex}",
            timestamp=int(time.time()),
            event_type=args.event_type,
        )
    except ValueError as exc:  # an empty or malformed secret: say so, no traceback
        print(f"dealflow sign: {exc}", file=sys.stderr)
        return 2
    print(" ".join(f"-H {name}:{value}" for name, value in headers.items()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dealflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="embedded Temporal + worker + API in the foreground").set_defaults(
        fn=_dev
    )
    api = sub.add_parser("api", help="the HTTP API (uvicorn)")
    api.add_argument("--host", default=None)
    api.set_defaults(fn=_api)
    sub.add_parser("worker", help="the Temporal worker").set_defaults(fn=_worker)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=_migrate)
    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key and print it once")
    create.add_argument("--role", choices=["admin", "approver", "viewer"], required=True)
    create.add_argument("--subject", required=True)
    create.add_argument("--name", default=None)
    create.set_defaults(fn=_keys_create)
    keys.add_parser("list", help="list keys").set_defaults(fn=_keys_list)
    sign = sub.add_parser("sign", help="print curl -H arguments that sign a webhook body")
    sign.add_argument("--secret", required=True)
    sign.add_argument("--body", required=True, help="the exact body, or - for standard input")
    sign.add_argument(
        "--scheme", choices=["standard", "github", "stripe", "hmac"], default="standard"
    )
    sign.add_argument("--id", default=None, help="delivery id (default: a new one)")
    sign.add_argument("--event-type", default=None, help="X-GitHub-Event for --scheme github")
    sign.set_defaults(fn=_sign)
    return p


def main(argv: list[str] | None = None) -> None:
    from store.migrate import DatabaseUnreachable

    args = parser().parse_args(argv)
    try:
        code = args.fn(args)
    except DatabaseUnreachable as exc:
        print(f"dealflow: {exc}", file=sys.stderr)
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
