"""The simulator's settings: FENCEX_ environment variables or command-line flags."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        cli_parse_args=True, cli_prog_name="simulator", cli_kebab_case=True, cli_implicit_flags=True
    )

    partitions: int = 24  # docs/design/partitions.md: the sizing rule at 170,000 fixes/s
    fences: int = Field(default=100, description="pasture fences to draw (with --setup)")
    devices: int = Field(default=200, description="animals in the herd")
    rate: float = Field(default=200.0, description="fixes per second (0: as fast as possible)")
    pack: int = Field(default=1, description="fixes per Kafka record: a collar's buffered track, keyed by the collar")
    duration_s: float = Field(default=0.0, description="stop after this long (0: run until stopped)")
    total: int = Field(default=0, description="stop after this many fixes (0: no limit)")
    seed: int = 1
    setup: bool = Field(default=False, description="write the pastures and device registrations to Redis first")
    dwell_s: float = 120.0
    bad_every: int = Field(
        default=0, description="every Nth record is malformed, to exercise the dead-letter topic (0: never)"
    )
    quiet: bool = False
    scenarios: bool = Field(
        default=False,
        description="act out the herd's alarms: animals out and back, batteries running down, a quiet collar, "
        "jumps and inaccurate fixes (services/simulator/scenarios.py)",
    )
    quiet_s: float = Field(default=200.0, description="with --scenarios: how long the quiet collar sends nothing")
