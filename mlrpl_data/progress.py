"""Progress bars: tqdm on stderr, only when stderr is a terminal and the user did not say --no-progress."""

from __future__ import annotations

import sys


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 initial: int = 0, unit_scale: bool = False, iterable=None):
    """A tqdm bar (a silent one when disabled or when stderr is not a TTY, e.g. a log file);
    with `iterable`, iterating the bar iterates it."""
    from tqdm import tqdm

    on = enabled and sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, disable=not on, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, unit_scale=unit_scale, leave=False)
