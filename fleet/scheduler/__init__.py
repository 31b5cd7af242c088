"""The scheduler: filter → score → select → bind (see README.md for the pipeline).

    from fleet.scheduler import ClusterView, Planner, schedule, explain

    view = ClusterView(devices=devices, variants=variants, placements=placements, measured=measured)
    planner = Planner()
    decision = schedule(view, spec, count=3, planner=planner)
    planner.binds            # what the controller commits to the store
    explain(view, spec, device_id="pi-03")[0].rejections
"""

from fleet.scheduler.config import DEFAULTS, SchedulerConfig
from fleet.scheduler.core import Decision, UnknownDeviceError, Verdict, explain, schedule
from fleet.scheduler.filters import estimate_memory, variant_for
from fleet.scheduler.planner import Planner
from fleet.scheduler.view import ClusterView, Stat, device_class

__all__ = [
    "DEFAULTS",
    "ClusterView",
    "Decision",
    "Planner",
    "SchedulerConfig",
    "Stat",
    "UnknownDeviceError",
    "Verdict",
    "device_class",
    "estimate_memory",
    "explain",
    "schedule",
    "variant_for",
]
