"""Progress bars for long runs (training steps, rows of tiles): tqdm's, with rate and time
left, written to stderr and only where stderr is a terminal, so logs and pipes stay clean."""

from __future__ import annotations

from tqdm import tqdm


def bar(total: int, what: str, unit: str, enabled: bool = True) -> tqdm:
    """A bar over ``total`` ``unit``s; ``enabled=False`` (another rank, ``--no-progress``) shows
    nothing, and neither does a bar whose stderr is not a terminal."""
    return tqdm(total=total, desc=what, unit=unit, disable=None if enabled else True, dynamic_ncols=True,
                leave=False)
