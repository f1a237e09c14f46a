"""Peak memory, measured the same way on a CPU as on a GPU.

On a GPU it is `torch.cuda.max_memory_allocated`. A CPU has no such counter, and the process's
peak RSS also counts what glibc keeps after a free (its thresholds move with the allocation
history), so two runs of the same step can differ by hundreds of MB. `peak_allocated` gives the
GPU counter's analog: the bytes of the tensors alive before the work, plus the peak of what the
work allocates on top, from the profiler's running total of tensor allocations.
"""

from __future__ import annotations

import resource
from typing import Any, Callable, Iterable

import torch


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each storage counted once (views share one)."""
    storages = {}
    for t in tensors:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """What a training step finds alive: parameters, buffers, gradients and optimizer state."""
    state = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None)]
    if optimizer is not None:
        state += [v for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v)]
    return state


def peak_allocated(fn: Callable[[], Any], device: torch.device, live: Iterable[torch.Tensor] = ()) -> tuple[Any, int]:
    """(fn(), peak bytes): on a GPU max_memory_allocated over fn; on a CPU the bytes of `live` (the
    tensors alive before fn that it should count) + the peak of fn's own allocations."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device)
    before = tensor_bytes(live)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    # each allocation event carries the allocator's running total of the bytes it handed out while a
    # profiler was on (across profiling sessions, so the total before fn is subtracted)
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if hasattr(node.extra_fields, "total_allocated"):
            events.append((node.start_time_ns, node.extra_fields.total_allocated, node.extra_fields.alloc_size))
    if not events:
        return out, before
    events.sort()
    start = events[0][1] - events[0][2]
    top = max(0, max(total for _, total, _ in events) - start)
    return out, before + top


def process_peak_mb() -> float:
    """The accelerator's peak allocated memory (torch.cuda.max_memory_allocated), else the process's
    peak RSS: cheap enough for every epoch of a run."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
