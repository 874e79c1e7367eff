"""Parts of a layer's view that are computed off the GUI thread, and filled in when done.

In a large model (a weight of `DEFER_MIN_VALUES` values or more) the first view of a layer
draws at once what the statistics already hold — the histograms, clip bands, metrics and the
per-channel ranges the analysis produced — and leaves the rest as `Pending` parts: a pass over
the weight's values, the error curves, each method's range and marker, the input-channel view,
the evaluation data's range and the convergence. Each part is a pure `build` (run on a worker
thread, by the same functions that compute it synchronously in a small model) and a `store`
that puts its value where the next draw reads it (run on the GUI thread). Until then its panel says
"computing…"; nothing is drawn from an approximation that the exact value would then replace.
A part whose build fails is not asked for again: its ``on_error`` stores what stands for it
(the panel then says why it is missing, `failed_text`), or, without one, the panel goes
without it.

`compute_parts` is the generator a worker runs; the caches that take the values are keyed by
what the values depend on, and a store refuses a value whose inputs were replaced meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMPUTING", "DEFER_MIN_VALUES", "ComputedPart", "Pending", "compute_parts", "failed_text",
]

#: A model holding a weight of at least this many values shows each layer's slow parts when
#: they are ready: a pass over a million values (statistics, fake-quantization) takes 5-20 ms,
#: a layer view draws several, and an activation's searches add tens of milliseconds; the
#: layers of smaller models are drawn whole at once.
DEFER_MIN_VALUES = 1 << 20

#: What a panel says while its part is being computed.
COMPUTING = "computing…"


@dataclass(frozen=True, eq=False)
class Pending:
    """One part of the view still to compute.

    ``key`` identifies it (a part asked for twice is computed once); ``what`` says what it
    is, in words; ``build`` computes it from inputs it captured (no document state, so it
    may run on any thread); ``store(value)`` puts the value in its cache, on the thread
    that owns the cache, and returns False when the cache no longer wants it (its inputs
    changed while it was computed); ``on_error(exc)``, on that thread too, stores what
    stands for a part whose build raised (so that its panel stops saying "computing…"), with
    the same return value."""

    key: tuple[Any, ...]
    what: str
    build: Callable[[], Any]
    store: Callable[[Any], bool]
    on_error: Callable[[Exception], bool] | None = None


def failed_text(what: str, exc: Exception) -> str:
    """What a panel says in place of a part whose build raised `exc` (the error dialog has
    the whole message)."""
    reason = str(exc) or type(exc).__name__
    if len(reason) > 120:
        reason = reason[:119] + "…"
    return f"{what}: could not be computed ({reason})"


@dataclass(frozen=True, eq=False)
class ComputedPart:
    """A pending part and its value (or the exception its build raised)."""

    pending: Pending
    value: Any = None
    error: Exception | None = None


def compute_parts(
    parts: Sequence[Pending], should_stop: Callable[[], bool]
) -> Generator[ComputedPart, None, int]:
    """Build each part in turn, yielding it when done; stops between parts when asked.
    Returns how many were built. A build that raises is yielded with its error: the view
    says why that part is missing, the others still come."""
    done = 0
    for part in parts:
        if should_stop():
            break
        try:
            value = part.build()
        except Exception as exc:  # shown as that part's message; the other parts go on
            yield ComputedPart(part, error=exc)
        else:
            yield ComputedPart(part, value)
        done += 1
    return done
