"""python -m services.api: the query API under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from services.api.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        # each worker process builds its own app (and index) from the environment
        uvicorn.run("services.api.asgi:app", host=settings.host, port=settings.port, workers=settings.workers,
                    log_level=settings.log_level, access_log=False, loop="uvloop", http="httptools")
    else:
        from services.api.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    access_log=False, loop="uvloop", http="httptools")


if __name__ == "__main__":
    main()
