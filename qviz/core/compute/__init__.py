"""Compute backends: where the many model runs of evaluation, sensitivity and mixed-precision
search happen — in this thread, a process pool, or Ray actors on a cluster — behind one
interface (`backend.ComputeBackend`). Results are the same numbers, in the same order,
whichever runs them."""
