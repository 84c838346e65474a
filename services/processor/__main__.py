"""python -m services.processor: one processor worker."""

from __future__ import annotations

import asyncio
import logging

import faust

from fencex.kafka.admin import wait_for_topics
from services.processor.app import create_app
from services.processor.settings import Settings


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Faust's agent must find fence-events with its partitions, so the topics come first.
    asyncio.run(wait_for_topics(settings.kafka_bootstrap, settings.topics.partitions(settings.partitions)))
    app, push = create_app(settings)
    faust.Worker(app, push, loglevel=settings.log_level, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
