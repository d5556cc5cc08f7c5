"""A desired state seen as if it were deployed: the record for `plan --against BASE`."""

from __future__ import annotations

from reconciler.desired.state import DesiredState
from reconciler.state.recorded import RecordedState
from reconciler.state.rows import recorded_instance, recorded_machine


def as_recorded(base: DesiredState) -> RecordedState:
    return RecordedState(
        deployment=base.deployment,
        revision=base.revision.sha if base.revision else None,
        machines={name: recorded_machine(m, m.closure) for name, m in base.machines.items()},
        instances={key: recorded_instance(i) for key, i in base.instances.items()},
        service_order=base.service_order,
        allocations=base.allocations,
    )
