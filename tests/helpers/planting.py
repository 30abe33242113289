"""A copy of an example with an unseeded op planted in it, for the tests of bisect on real training code:
noise from a generator no seed decides, added from step ``PLANT_NOISE_FROM`` on (nothing when unset)."""

from __future__ import annotations

from pathlib import Path

NOISE = '''
import os as _os
_UNSEEDED = torch.Generator().manual_seed(int.from_bytes(_os.urandom(8), "little") >> 1)


def planted(step, x):
    start = _os.environ.get("PLANT_NOISE_FROM")
    if start is None or step < int(start):
        return x
    return x + 1e-3 * torch.randn(x.shape, generator=_UNSEEDED)
'''


def planted_copy(example: Path, folder: Path, after: str, changes: list[tuple[str, str]]) -> Path:
    """``example`` copied into ``folder``, with ``planted`` defined after the line ``after`` and each
    ``(old, new)`` text changed once; the copy's path."""
    text = example.read_text().replace(after, after + NOISE, 1)
    for old, new in changes:
        if old not in text:
            raise ValueError(f"{example.name} no longer holds {old!r}: the planted copy needs updating")
        text = text.replace(old, new, 1)
    folder.mkdir()
    copy = folder / example.name
    copy.write_text(text)
    return copy


def planted_line(copy: Path) -> int:
    """The line of the planted op, as bisect names it."""
    return next(i for i, text in enumerate(copy.read_text().splitlines(), 1) if "torch.randn(x.shape" in text)
