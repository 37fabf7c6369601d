"""Progress of long work: a live bar on a terminal (or a notebook), one line per stage when it finishes elsewhere
(logs, CI, a redirected stderr), nothing when switched off."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "image", **options: Any):
    """A bar over `total` units of work labelled `desc`: tqdm where someone watches it change, else a `StageLine`
    (a redrawn bar in a log file is hundreds of carriage returns)."""
    if not enabled:
        return tqdm(total=total, disable=True)
    if sys.stderr.isatty() or "ipykernel" in sys.modules:
        return tqdm(total=total, desc=desc, unit=unit, **options)
    return StageLine(total, desc, unit)


class StageLine:
    """What a bar says once it is done, in one line on stderr: `features: 12 images in 3.1 s`."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, 0
        self.started = time.perf_counter()
        self.closed = False

    def update(self, count: int = 1) -> None:
        self.n += count

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        units = f"{self.unit}s" if self.n != 1 else self.unit
        done = f"{self.n}" if self.n == self.total else f"{self.n} of {self.total}"
        print(f"{self.desc}: {done} {units} in {time.perf_counter() - self.started:.1f} s", file=sys.stderr,
              flush=True)

    def __enter__(self) -> StageLine:
        return self

    def __exit__(self, *_) -> None:
        self.close()
