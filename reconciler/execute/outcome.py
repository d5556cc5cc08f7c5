"""What an attempt ends with, as one type that `apply`, `destroy`, `rollback`, self-heal
and the controller all read: the result, a reason from one list, and whether trying
again can help. Condition types live here too, so a reason is spelled in one place.

A step that cannot go on raises one of three errors, by what the caller should do:
`Failed` (retry after a backoff: a machine may come back), `Stalled` (do not retry until
something changes: the models, the commit, a person), `Waiting` (retry after `after`
seconds: someone else holds what we need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reconciler.errors import UserError


class ConditionType(StrEnum):
    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(StrEnum):
    # outcomes of an attempt
    APPLIED = "Applied"
    UNCHANGED = "Unchanged"
    COPIED = "Copied"
    PROVISIONED = "Provisioned"
    DESTROYED = "Destroyed"
    HEALED = "Healed"
    BUILD_FAILED = "BuildFailed"
    PROVISION_FAILED = "ProvisionFailed"
    TRANSFER_FAILED = "TransferFailed"
    LOCK_REFUSED = "LockRefused"
    ROLLED_BACK = "RolledBack"
    ROLLBACK_FAILED = "RollbackFailed"
    INTERRUPTED = "Interrupted"
    BLOCKED = "Blocked"
    ALLOCATION_RACE = "AllocationRace"
    BUSY = "Busy"  # another attempt of the deployment holds its lease
    DECLINED = "Declined"
    # the controller's own
    APPLY_FAILED = "ApplyFailed"
    APPLYING = "Applying"
    INVALID_MODELS = "InvalidModels"
    NOT_A_DESCENDANT = "NotADescendant"
    UNTRUSTED_COMMIT = "UntrustedCommit"
    HEAD_UNAVAILABLE = "HeadUnavailable"
    # conditions
    NEVER_APPLIED = "NeverApplied"
    ATTEMPT_FAILED = "AttemptFailed"
    ATTEMPT_IN_FLIGHT = "AttemptInFlight"
    STALLED = "Stalled"
    NOT_OBSERVED = "NotObserved"
    MACHINES_UNREACHABLE = "MachinesUnreachable"
    INSTANCES_NOT_ACTIVE = "InstancesNotActive"
    INSTANCES_UNHEALTHY = "InstancesUnhealthy"
    ALL_ACTIVE = "AllActive"
    IDLE = "Idle"
    NOT_STALLED = "NotStalled"


class Result(StrEnum):
    APPLIED = "applied"  # a new generation
    UNCHANGED = "unchanged"  # nothing to do
    COPIED = "copied"  # --copy-only, --provision-only: done as far as asked
    FAILED = "failed"  # nothing running was touched, or it was rolled back
    STALLED = "stalled"  # the rollback failed: resumed before any other apply


EXIT_CODES = {Result.FAILED: 1, Result.STALLED: 3}


class AttemptError(UserError):
    """A step could not go on; `reason` says why in one word, the message in words."""

    def __init__(self, reason: Reason, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.details = reason, message, details or []


class Failed(AttemptError):
    """Nothing running was touched, or it was rolled back: retry after a backoff."""


class Stalled(AttemptError):
    """The previous generation may not be intact: no retry until something changes."""

    def __init__(self, reason: Reason, message: str, details: list[str] | None = None) -> None:
        super().__init__(reason, message, details)
        self.exit_code = 3


class Waiting(AttemptError):
    """Someone else holds what the attempt needs: retry after `after` seconds."""

    def __init__(self, reason: Reason, message: str, after: float) -> None:
        super().__init__(reason, message)
        self.after = after


@dataclass(frozen=True)
class Outcome:
    result: Result
    reason: Reason
    message: str = ""
    generation: int | None = None
    revision: str | None = None
    transferred_bytes: int = 0
    endpoints: dict[str, str] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)
    retry_after: float | None = None
    report: dict[str, Any] = field(default_factory=dict)  # what a step adds (copy-only)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.result, 0)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @classmethod
    def of(cls, error: AttemptError) -> Outcome:
        stalled = isinstance(error, Stalled)
        return cls(
            Result.STALLED if stalled else Result.FAILED,
            error.reason,
            error.message,
            details=list(error.details),
            retry_after=error.after if isinstance(error, Waiting) else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "result": str(self.result),
            "reason": str(self.reason),
            "message": self.message,
            "generation": self.generation,
            "revision": self.revision,
            "transferredBytes": self.transferred_bytes,
            "endpoints": self.endpoints,
            "details": self.details,
            "retryAfter": self.retry_after,
            **self.report,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        """Read back what `to_json` wrote (the controller reads its child's)."""
        return cls(
            Result(data["result"]),
            Reason(data["reason"]),
            str(data.get("message") or ""),
            data.get("generation"),
            data.get("revision"),
            int(data.get("transferredBytes") or 0),
            dict(data.get("endpoints") or {}),
            list(data.get("details") or []),
            data.get("retryAfter"),
        )
