"""fencex: real-time geofencing. The core: fences, fixes, the index, the detector."""

from fencex.detector import DeviceState, Membership, Outcome, detect, reevaluate
from fencex.errors import (
    BrokerUnavailable,
    FencexError,
    InvalidFence,
    InvalidFix,
    InvalidInput,
    NotFound,
    ServerStartError,
    StoreUnavailable,
    Unavailable,
    VersionConflict,
)
from fencex.event import EVENT_SCHEMA, Event, event_id
from fencex.fence import DEFAULT_TENANT, Fence, FenceProperties, parse_geometry
from fencex.fix import Fix, Rejected, parse_record
from fencex.herd import DEFAULT_RULES, HerdRules, Mob
from fencex.index import FenceIndex
from fencex.pipeline import Processed, default_rules, process, reevaluate_all

__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_TENANT",
    "EVENT_SCHEMA",
    "BrokerUnavailable",
    "DeviceState",
    "Event",
    "Fence",
    "FenceIndex",
    "FenceProperties",
    "FencexError",
    "Fix",
    "HerdRules",
    "InvalidFence",
    "InvalidFix",
    "InvalidInput",
    "Membership",
    "Mob",
    "NotFound",
    "Outcome",
    "Processed",
    "Rejected",
    "ServerStartError",
    "StoreUnavailable",
    "Unavailable",
    "VersionConflict",
    "default_rules",
    "detect",
    "event_id",
    "parse_geometry",
    "parse_record",
    "process",
    "reevaluate",
    "reevaluate_all",
]
