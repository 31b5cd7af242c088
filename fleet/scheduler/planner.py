"""The Planner: the one place a scheduling pass writes to.

A pass (one reconcile of one or several deployments) binds and unbinds replicas here instead of
in the store. The planner accounts for the memory and disk each bind promises, so the second
replica of a pass sees what the first one took, and the scheduler can be tested against
in-memory state. The controller commits ``binds``/``unbinds`` to the store, then calls
:meth:`Planner.apply` so its long-lived :class:`~fleet.scheduler.view.ClusterView` agrees.

    planner = Planner()
    schedule(view, spec, 2, planner)
    store.commit(planner.binds, planner.unbinds)     # the controller's job
    planner.apply(view)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.model import Placement

if TYPE_CHECKING:
    from fleet.scheduler.view import ClusterView


class Planner:
    """Binds and unbinds of one pass, with the resources the binds promise per device.

    >>> p = Planner()
    >>> p.memory_promised("pi-01")
    0
    """

    def __init__(self) -> None:
        self.binds: list[Placement] = []
        self.unbinds: list[Placement] = []
        self._memory: dict[str, int] = {}
        self._disk: dict[str, int] = {}
        self._charged: dict[tuple[str, str], tuple[int, int]] = {}  # (deployment, device) → (mem, disk)
        self._planned: dict[str, set[str]] = {}  # deployment → devices bound in this pass

    def bind(self, placement: Placement, *, memory_bytes: int, disk_bytes: int) -> None:
        """Plan ``placement`` and promise its memory and disk on its device."""
        slot = (placement.deployment, placement.device)
        if slot in self._charged:
            raise ValueError(f"{placement.deployment} is already bound to {placement.device} in this plan")
        self.binds.append(placement)
        self._charged[slot] = (memory_bytes, disk_bytes)
        self._memory[placement.device] = self._memory.get(placement.device, 0) + memory_bytes
        self._disk[placement.device] = self._disk.get(placement.device, 0) + disk_bytes
        self._planned.setdefault(placement.deployment, set()).add(placement.device)

    def unbind(self, placement: Placement) -> None:
        """Plan removing ``placement``. A bind of this same pass is cancelled and its promise
        released; an existing replica's memory is not credited back, because it stays in use
        until the agent unloads it and telemetry says so."""
        slot = (placement.deployment, placement.device)
        charged = self._charged.pop(slot, None)
        if charged is None:
            self.unbinds.append(placement)
            return
        self.binds = [b for b in self.binds if (b.deployment, b.device) != slot]
        self._memory[placement.device] -= charged[0]
        self._disk[placement.device] -= charged[1]
        self._planned[placement.deployment].discard(placement.device)

    def memory_promised(self, device_id: str) -> int:
        return self._memory.get(device_id, 0)

    def disk_promised(self, device_id: str) -> int:
        return self._disk.get(device_id, 0)

    def planned_devices(self, deployment: str) -> set[str]:
        """Devices this pass has bound ``deployment`` to."""
        return self._planned.get(deployment, set())

    def apply(self, view: ClusterView) -> None:
        """Make ``view`` reflect the plan (after the store accepted it)."""
        for p in self.unbinds:
            view.remove_placement(p.deployment, p.device)
        for p in self.binds:
            view.add_placement(p)

    def __len__(self) -> int:
        return len(self.binds) + len(self.unbinds)
