"""python-admission: an admission policy for orchestratord, written in Python.

Built into a WebAssembly component for the `admission-policy` world of
`wit/0.2.0/policy.wit` (`orchd:policy@0.2.0`) by componentize-py (see build.sh).
componentize-py generates the `wit_world` package at build time; this module
supplies the implementations of the two exported interfaces (module
`wit_world.exports`):

* class `Lifecycle`: `info` and `init`;
* class `Admission`: `decide`.

A WIT `result<_, string>` error is produced by raising
`componentize_py_types.Err("message")`; returning normally is `ok`.

The policy does no I/O at all (no print, no files, no clock): the host gives
policies no WASI, and the component is built with `--stub-wasi`, which replaces
every WASI import with a trapping stub inside the component (it imports none).
"""

import json

from componentize_py_types import Err

from wit_world import exports
from wit_world.exports.admission import (
    Decision,
    Decision_Accept,
    Decision_Reject,
    Rejection,
    Snapshot,
)
from wit_world.imports.types import PolicyInfo, Priority

NAME = "python-admission"
VERSION = "0.1.0"
LABEL = "python-aging"
MIN_RETRY_AFTER_MS = 100
# The host refuses a rejection whose retry-after exceeds one hour, or whose message
# exceeds 1024 bytes, as an invalid output: stay inside both.
MAX_RETRY_AFTER_MS = 3_600_000
MAX_MESSAGE_BYTES = 1024

# Configuration lives at module level: `init` and `decide` are called on
# different objects (`Lifecycle` vs `Admission`), but in the same instance.
_max_batch_share = 1.0


def parse_config(text: str) -> float:
    """Returns max_batch_share; raises ValueError with a readable message."""
    text = text.strip()
    if not text:
        return 1.0
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{NAME} config: invalid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{NAME} config: expected a JSON object")
    unknown = sorted(k for k in config if k != "max_batch_share")
    if unknown:
        raise ValueError(
            f"{NAME} config: unknown key(s) {', '.join(unknown)}; "
            "the only key is max_batch_share"
        )
    share = config.get("max_batch_share", 1.0)
    # bool is an int subclass in Python: refuse `true` explicitly.
    if isinstance(share, bool) or not isinstance(share, (int, float)):
        raise ValueError(f"{NAME} config: max_batch_share must be a number")
    share = float(share)
    if not (0.0 < share <= 1.0):  # also refuses NaN
        raise ValueError(f"{NAME} config: max_batch_share must be in (0, 1], got {share}")
    return share


class Lifecycle(exports.Lifecycle):
    def info(self) -> PolicyInfo:
        return PolicyInfo(name=NAME, version=VERSION)

    def init(self, config: str) -> None:
        global _max_batch_share
        try:
            _max_batch_share = parse_config(config)
        except ValueError as e:
            # Raising Err(...) makes the WIT result `err(string)`.
            raise Err(str(e))


class Admission(exports.Admission):
    def decide(self, snapshot: Snapshot) -> Decision:
        return decide(snapshot, _max_batch_share)


def decide(snapshot: Snapshot, max_batch_share: float) -> Decision:
    queue = snapshot.queue
    request = snapshot.request
    batch_depth = sum(c.depth for c in queue.classes if c.priority == Priority.BATCH)
    batch_limit = max_batch_share * queue.capacity

    if queue.depth < queue.capacity:
        if request.priority == Priority.INTERACTIVE or batch_depth < batch_limit:
            return Decision_Accept(request.priority)
        why = (
            f"batch share of pool {queue.pool_id} is used up "
            f"({batch_depth} batch tasks queued, limit {batch_limit:g} of {queue.capacity})"
        )
    else:
        why = f"queue of pool {queue.pool_id} is full ({queue.depth}/{queue.capacity})"

    return Decision_Reject(
        Rejection(
            code="ADMISSION_REJECT",
            message=_truncate(f"{why}; retry later", MAX_MESSAGE_BYTES),
            retry_after_ms=retry_after_ms(queue.depth, queue.slots_total, queue.service_ms),
            policy_label=LABEL,
        )
    )


def retry_after_ms(ahead: int, slots_total: int, service_ms: int) -> int:
    """max(100, ceil(ahead / slots) * service_ms), capped at the host's one hour."""
    waves = -(-ahead // max(1, slots_total))  # exact integer ceil; 0 slots counts as 1
    return min(MAX_RETRY_AFTER_MS, max(MIN_RETRY_AFTER_MS, waves * service_ms))


def _truncate(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."
