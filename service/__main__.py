"""`python -m service api | runner | up | migrate | keys create --tenant NAME | keys list |
keys revoke KEY_ID | keys rotate KEY_ID`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.settings import load_settings


async def _keys(args: argparse.Namespace) -> int:
    """`keys create | list | revoke | rotate`: what each prints is one line per key (a new key is
    printed once, then only its hash is kept)."""
    import json

    from service.db.engine import Database, migrate
    from service.errors import ServiceError
    from service.jobs.store import Store

    settings = load_settings()
    await asyncio.to_thread(migrate, settings.database_url)
    db = Database(settings.database_url)
    store = Store(db)
    try:
        match args.keys_command:
            case "create":
                print(await store.create_api_key(args.tenant))
            case "list":
                for row in await store.list_api_keys(args.tenant):
                    print(json.dumps(row))
            case "revoke":
                row = await store.revoke_api_key(args.key_id)
                print(json.dumps(row))
                print(f"revoked; API processes stop accepting it within {settings.key_cache_seconds:g} s "
                      "(TUNEDOCK_KEY_CACHE_SECONDS)", file=sys.stderr)
            case "rotate":
                new_id, key = await store.rotate_api_key(args.key_id)
                print(key)
                print(f"{args.key_id} revoked, replaced by {new_id}; the old key stops working within "
                      f"{settings.key_cache_seconds:g} s", file=sys.stderr)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await db.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="tunedock service")
    sub = parser.add_subparsers(dest="command", required=True)
    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    sub.add_parser("runner", help="claim queued jobs and train them")
    sub.add_parser("up", help="development: API + runner on the embedded defaults, with a dev key")
    sub.add_parser("migrate", help="upgrade the database schema")
    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key for a tenant and print it once")
    create.add_argument("--tenant", required=True)
    listing = keys_sub.add_parser("list", help="every key's id, tenant, created_at and revoked_at "
                                               "(JSON lines; never the key itself)")
    listing.add_argument("--tenant")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its id (from `keys list`)")
    revoke.add_argument("key_id")
    rotate = keys_sub.add_parser("rotate", help="revoke a key by id and print its tenant's new key once")
    rotate.add_argument("key_id")
    args = parser.parse_args(argv)

    settings = load_settings()
    if args.command == "api":
        import uvicorn

        from service.app import create_app

        host, port = args.host or settings.host, args.port or settings.port
        if settings.api_workers == 1:
            uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)
        else:
            from service.db.engine import migrate
            from service.metrics import share_between_processes

            migrate(settings.database_url)  # once, before the workers (each one's is then a no-op)
            share_between_processes()
            # Each worker builds its app from the same environment.
            uvicorn.run("service.app:create_app", factory=True, workers=settings.api_workers, host=host,
                        port=port, log_level="warning", access_log=False)
    elif args.command == "runner":
        from service.runner.loop import run_forever

        return run_forever(settings)
    elif args.command == "up":
        from service.dev import up

        return up(settings)
    elif args.command == "migrate":
        from service.db.engine import migrate

        migrate(settings.database_url)
    elif args.command == "keys":
        return asyncio.run(_keys(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
