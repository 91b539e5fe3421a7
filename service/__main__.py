"""`python -m service api | runner | up | migrate | keys create --tenant NAME`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.settings import load_settings


async def _create_key(tenant: str) -> str:
    from service.jobs.database import Database, migrate
    from service.jobs.store import Store

    settings = load_settings()
    await asyncio.to_thread(migrate, settings.database_url)
    db = Database(settings.database_url)
    try:
        return await Store(db).create_api_key(tenant)
    finally:
        await db.close()


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
    args = parser.parse_args(argv)

    settings = load_settings()
    if args.command == "api":
        import uvicorn

        from service.app import create_app

        uvicorn.run(create_app(settings), host=args.host or settings.host,
                    port=args.port or settings.port, log_level="warning", access_log=False)
    elif args.command == "runner":
        from service.runner.loop import run_forever

        return run_forever(settings)
    elif args.command == "up":
        from service.dev import up

        return up(settings)
    elif args.command == "migrate":
        from service.jobs.database import migrate

        migrate(settings.database_url)
    elif args.command == "keys":
        print(asyncio.run(_create_key(args.tenant)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
