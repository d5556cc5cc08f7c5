"""A desired state seen as if it were deployed: the record for `plan --against BASE`."""

from __future__ import annotations

from reconciler.desired.state import DesiredState
from reconciler.state.recorded import RecordedInstance, RecordedMachine, RecordedState


def as_recorded(base: DesiredState) -> RecordedState:
    return RecordedState(
        deployment=base.deployment,
        revision=base.revision.sha if base.revision else None,
        machines={
            name: RecordedMachine(
                name=name,
                target_env=m.target_env,
                address=m.address,
                profile=m.profile,
                paths=frozenset(m.closure),
                provider_id="(base)" if m.target_env in ("container", "ec2") else None,
                provider=m.provider,
                location=m.location,
            )
            for name, m in base.machines.items()
        },
        instances={
            key: RecordedInstance(
                key=key,
                service=i.service,
                machine=i.machine,
                type=i.type,
                identity=i.identity,
                inputs=i.inputs,
                package_path=i.package_path,
                port=i.port,
            )
            for key, i in base.instances.items()
        },
        service_order=base.service_order,
        allocations=base.allocations,
    )
