"""The fingerprints' hash: a tensor's words hashed on its device, for many tensors at once.

A fingerprint is a 32-bit multilinear hash of a tensor's bytes: the bytes read as
32-bit words ``x_i``, each multiplied by a fixed random odd word ``w_i`` for its
position, summed modulo 2**32. It depends on the order of the bytes (moving a value
changes it, unlike an XOR or a plain sum), and a difference in one word, a one-ulp change
included, always changes it: ``w_i * d`` is never 0 modulo 2**32 for odd ``w_i`` and
``0 < |d| < 2**32``. Many words differing at once collide with probability about 2**-32.

The cost is what matters, so it is made of few, large operations. On the CPU a compiled
kernel (``mlrepro/training/_wordhash.c``, built when mlrepro is installed where a C compiler is
at hand) reads every tensor once, where it lies, in one call for all of them; it takes them as
buffers and checks every length, so nothing passed to it makes it read past one. Without it
NumPy computes the same numbers: each tensor is read through a NumPy view, its words
times the weights go into one buffer (NumPy's int32 multiplication is vectorised; 64-bit
multiplication is not), and one ``reduceat`` sums each tensor's part, wrapping in uint32.
On a GPU every tensor is copied into a flat buffer of its dtype (one ``_foreach_copy_``),
each padded to whole blocks of ``BLOCK_WORDS`` words, which are multiplied and summed block
by block in 32-bit integer arithmetic; each tensor's blocks are then summed as the
difference of two running sums. Integer sums are exact in any order, so all three ways give
the same numbers (the tests run each of them on the CPU). On a GPU the results stay on the
device and come to the host a block of steps at a time, like the losses: the loop is not
synchronised every step.

Measured (benchmarks/, the record of 2026-12-03), for the CIFAR-10 CNN's 20 tensors (124,000 words) right
after backward, on this project's 2-core machine: 0.08 ms with the compiled kernel, 0.13 ms with
NumPy, and 0.10 ms for xxhash's xxh3_64 over each tensor's bytes, which is another hash (no GPU
kernel, and not the fingerprints earlier runs logged). In the job, its loader's workers on the same
cores, fingerprints at every step, its batch's (46 us of them) included, cost 4.8 % of the step.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

try:
    from mlrepro.training import _wordhash
except ImportError:  # installed without a C compiler: NumPy computes the same numbers, more slowly
    _wordhash = None

BLOCK_WORDS = 64
# Steps of fingerprints kept on a GPU before one copy to the host.
DEVICE_BLOCK_STEPS = 256
_WEIGHT_SEED = 0x6D6C7270  # "mlrp": the weights are the same in every process and on every device
_WORDS_OF = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int32, 16: torch.int32}


_CHUNK = 1 << 16
_host_weights = np.empty(0, dtype=np.int32)


def _weights(count: int, device: torch.device) -> torch.Tensor:
    """The first ``count`` odd 32-bit weights, the same in every process and on every device: drawn on
    the CPU in chunks of a fixed size, each from a seed of its own, so that every prefix agrees."""
    global _host_weights
    if len(_host_weights) < count:
        chunks = [_host_weights]
        for index in range(len(_host_weights) // _CHUNK, -(-count // _CHUNK)):
            generator = torch.Generator().manual_seed(_WEIGHT_SEED + index)
            words = torch.randint(-(2**31), 2**31, (_CHUNK,), dtype=torch.int64, generator=generator) | 1
            chunks.append(words.to(torch.int32).numpy())
        _host_weights = np.concatenate(chunks)
    return torch.from_numpy(_host_weights[:count].copy()).to(device)


def _host_words(tensor: torch.Tensor) -> np.ndarray:
    """A CPU tensor's bytes as 32-bit words, a view where it can be (narrower types widened, as
    on a device)."""
    itemsize = tensor.element_size()
    if itemsize in (4, 8):
        try:  # (a tensor that is not contiguous is copied, in its logical order)
            array = (tensor.detach() if tensor.requires_grad else tensor).numpy()
            return np.ascontiguousarray(array).reshape(-1).view(np.int32)
        except (TypeError, RuntimeError):  # a dtype NumPy does not have
            pass
    flat = tensor.detach().contiguous().reshape(-1)
    words = flat.view(_WORDS_OF.get(itemsize, torch.uint8))
    return (words.to(torch.int32) if itemsize < 4 or itemsize not in _WORDS_OF else words).numpy()


def _own_words(tensor: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray | None:
    """A tensor's words shaped ``shape`` if they are a view of its own memory (updates in place show
    through them), else None: a copy (a narrower dtype widened, say) must be made again each time."""
    words = _host_words(tensor)
    return words.reshape(shape) if words.ctypes.data == tensor.data_ptr() else None


def _grown_host_weights(count: int) -> np.ndarray:
    """The host's weights, at least ``count`` of them (grown as ``_weights`` grows them), not copied."""
    if len(_host_weights) < count:
        _weights(count, torch.device("cpu"))
    return _host_weights


def _numpy_hash(words: np.ndarray) -> int:
    """One tensor's words hashed with NumPy: the numbers the kernel and the device compute."""
    products = np.multiply(words, _grown_host_weights(len(words))[:len(words)])
    return int(np.add.reduce(products.view(np.uint32), dtype=np.uint32))


def _kernel_buffer(tensor: torch.Tensor) -> np.ndarray:
    """What the compiled kernel reads of a CPU tensor: its own memory where its bytes are whole words
    (contiguous, no autograd), read as bytes; else NumPy's copy of its words."""
    if tensor.element_size() % 4 == 0 and tensor.is_contiguous() and not tensor.requires_grad:
        try:
            return tensor.numpy()
        except (RuntimeError, TypeError):  # a dtype NumPy lacks, a tensor not on the CPU
            pass
    return _host_words(tensor)


def fingerprint_of(tensor: torch.Tensor) -> int:
    """One tensor's fingerprint, at once (on a GPU, a synchronisation): what a replay takes of every
    op's output. Equal to what ``Fingerprinter`` takes of the same tensor."""
    return _numpy_hash(_host_words(tensor.detach().cpu()))


@dataclass
class _Group:
    """Tensors of one dtype, copied together into one padded buffer."""

    columns: list[int]
    buffer: torch.Tensor  # the dtype's flat buffer, zero where padding
    slots: list[torch.Tensor]  # one view of the buffer per tensor, shaped like it
    words: torch.Tensor  # the buffer read as 32-bit words (widened where the dtype is narrower)
    widen: bool


_said_missing = False


def _say_the_kernel_is_missing() -> None:
    """Once a process: the install fell back to NumPy (no C compiler or Python headers at hand)."""
    global _said_missing
    if not _said_missing:
        _said_missing = True
        warnings.warn("mlrepro's compiled fingerprint hash was not built when it was installed (no C compiler or "
                      "Python headers): NumPy computes the same fingerprints, about twice as slowly; reinstall "
                      "mlrepro where gcc and python3-dev are at hand to build it", RuntimeWarning, stacklevel=3)


class Fingerprinter:
    """Hashes a fixed list of tensor shapes and dtypes (a model's parameters and their gradients)."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device, on_host: bool | None = None,
                 kept: int = 0, compiled: bool | None = None) -> None:
        """``on_host``: sum on the host (the default for CPU tensors) or with torch, as on a GPU.
        ``compiled``: on the host, with the compiled kernel (the default, where it was built) or
        with NumPy. ``kept``: how many of the first tensors are passed again as the same objects
        at every call, changed in place (a model's parameters): NumPy's views of them are made once."""
        self.layout = [(tuple(t.shape), t.dtype) for t in tensors]
        self.kept = kept
        self.device = device
        self.on_host = device.type == "cpu" if on_host is None else on_host
        if compiled and _wordhash is None:
            raise RuntimeError("mlrepro.training._wordhash was not built: mlrepro was installed without a C compiler")
        self.compiled = self.on_host and _wordhash is not None and compiled is not False
        if self.on_host and compiled is None and _wordhash is None:
            _say_the_kernel_is_missing()
        if self.on_host:
            self._init_host(tensors)
        else:
            self._init_device(tensors, device)

    def _init_host(self, tensors: list[torch.Tensor]) -> None:
        """On the CPU the words are read where they lie, through NumPy views, without a copy: each
        tensor's words times its weights into one buffer, then one ``reduceat`` sums each tensor's
        part, wrapping in uint32 (NumPy multiplies int32 about twice as fast as torch here).

        This runs every step for every parameter and gradient, right after backward, when the
        interpreter's and NumPy's code and the tensors are out of the caches: there the CIFAR-10
        CNN's 20 tensors took about 200 us, where a second hash at once takes 50, and 20 tensors
        of ten elements took 85. So the calls are few: a 4-byte tensor (float32, the common case)
        is read through one ``view`` in its own shape, its weights and products shaped alike
        (elementwise, in its logical order, whatever its strides), and a parameter's view is made
        once."""
        words = [max(1, t.numel() * t.element_size() // 4 if t.element_size() >= 4 else t.numel()) for t in tensors]
        weights = _weights(max(words, default=1), torch.device("cpu")).numpy()
        self._products_np = np.zeros(sum(words), dtype=np.int32)  # an empty tensor's one word stays 0
        self._starts = np.concatenate([[0], np.cumsum(words)[:-1]]).astype(np.intp)
        # Per tensor: its weights and its part of the products, shaped like it where its elements
        # are words (weights None for an empty tensor), and whether they are.
        self._host_columns: list[tuple[np.ndarray | None, np.ndarray, bool]] = []
        for tensor, start, count in zip(tensors, self._starts, words):
            slot = self._products_np[start:start + count]
            if not tensor.numel():
                self._host_columns.append((None, slot, False))
            elif tensor.element_size() == 4:
                self._host_columns.append((weights[:count].reshape(tensor.shape), slot.reshape(tensor.shape), True))
            else:
                self._host_columns.append((weights[:count], slot, False))
        # (tensor, its address, its words) of the kept tensors: made again only if it is another
        # object or its storage moved (``p.data = ...``).
        self._kept_views: list[tuple[torch.Tensor, int, np.ndarray | None] | None] = [None] * self.kept
        self._weights_np = weights

    def _init_device(self, tensors: list[torch.Tensor], device: torch.device) -> None:
        by_dtype: dict[torch.dtype, list[int]] = {}
        for column, tensor in enumerate(tensors):
            by_dtype.setdefault(tensor.dtype, []).append(column)
        self._groups: list[_Group] = []
        start_of_column = [0] * len(tensors)  # where each tensor's words start among all words
        words_of_column = [0] * len(tensors)
        total = 0
        for dtype, columns in by_dtype.items():
            itemsize = torch.empty(0, dtype=dtype).element_size()
            per_element = max(1, itemsize // 4)  # words an element takes (float64: 2)
            elements_per_block = BLOCK_WORDS // per_element
            sizes = [tensors[c].numel() for c in columns]
            padded = [-(-max(size, 1) // elements_per_block) * elements_per_block for size in sizes]
            buffer = torch.zeros(sum(padded), dtype=dtype, device=device)
            slots, offset = [], 0
            for column, size, room in zip(columns, sizes, padded):
                slots.append(buffer[offset:offset + size].view(tensors[column].shape))
                start_of_column[column] = total + offset * per_element
                words_of_column[column] = room * per_element
                offset += room
            total += offset * per_element
            widen = itemsize < 4 or itemsize not in _WORDS_OF
            words = buffer.view(_WORDS_OF.get(itemsize, torch.uint8))
            self._groups.append(_Group(columns, buffer, slots, words, widen))
        # Each tensor's words are weighted from the first weight on: its fingerprint depends on its
        # bytes alone, not on where it sits among the others.
        weights = _weights(max(words_of_column, default=0), torch.device("cpu"))
        in_order = sorted(range(len(tensors)), key=start_of_column.__getitem__)
        self._weights = torch.cat([weights[:words_of_column[c]] for c in in_order]).to(device)
        self._products = torch.empty(total, dtype=torch.int32, device=device)
        # Block sums, then each tensor's blocks as the difference of two running sums (int64: exact
        # modulo 2**64, in any order).
        blocks = total // BLOCK_WORDS
        self._first = torch.tensor([start_of_column[c] // BLOCK_WORDS for c in range(len(tensors))], device=device)
        self._end = self._first + torch.tensor([w // BLOCK_WORDS for w in words_of_column], device=device)
        self._block_sums = torch.empty(blocks, dtype=torch.int32, device=device)
        self._running = torch.zeros(blocks + 1, dtype=torch.int64, device=device)

    def _hash_compiled(self, tensors: list[torch.Tensor | None]) -> np.ndarray:
        """Every tensor's words in one call of the kernel, which takes them as buffers and checks
        every length itself: a tensor's own memory where its words lie there (a parameter's view
        made once), else NumPy's copy of them (not contiguous, a narrower dtype widened)."""
        kept = self._kept_views
        buffers: list[np.ndarray | None] = []
        for column, (tensor, (weights, _, _)) in enumerate(zip(tensors, self._host_columns)):
            if weights is None or tensor is None:
                buffers.append(None)  # empty, or missing: its fingerprint is 0
            elif column < self.kept:
                view = kept[column]
                if view is None or view[0] is not tensor or view[1] != tensor.data_ptr():
                    view = kept[column] = (tensor, tensor.data_ptr(), _own_words(tensor, weights.shape))
                buffers.append(view[2] if view[2] is not None else _host_words(tensor))
            else:  # the common case in one call: a gradient's own memory, read as bytes by the kernel
                buffers.append(_kernel_buffer(tensor))
        fingerprints = np.zeros(len(tensors), dtype=np.uint32)
        _wordhash.hash_words(buffers, self._weights_np, fingerprints)
        return fingerprints

    def _hash_on_host(self, tensors: list[torch.Tensor | None]) -> np.ndarray:
        kept = self._kept_views
        for column, (tensor, (weights, slot, elements_are_words)) in enumerate(zip(tensors, self._host_columns)):
            if weights is None:
                continue  # empty
            if column < self.kept:
                view = kept[column]
                if view is None or view[0] is not tensor or view[1] != tensor.data_ptr():
                    view = kept[column] = (tensor, tensor.data_ptr(), _own_words(tensor, weights.shape))
                if view[2] is not None:
                    np.multiply(view[2], weights, out=slot)
                    continue
            elif elements_are_words and tensor is not None:
                try:  # the common case in two calls: a float32 gradient
                    np.multiply(tensor.numpy().view(np.int32), weights, out=slot)
                    continue
                except (RuntimeError, TypeError, ValueError):  # it requires grad; NumPy lacks its dtype; another shape
                    pass
            if tensor is None:
                slot.fill(0)
            else:
                np.multiply(_host_words(tensor).reshape(weights.shape), weights, out=slot)
        return np.add.reduceat(self._products_np.view(np.uint32), self._starts, dtype=np.uint32)

    def hash(self, tensors: list[torch.Tensor | None]) -> np.ndarray | torch.Tensor:
        """One fingerprint per tensor: uint32 on the host for CPU tensors, else int64 on the device
        (brought home later, in blocks). A missing tensor (a gradient never computed) hashes as zeros."""
        if not self.on_host:
            return self._hash_on_device(tensors)
        return self._hash_compiled(tensors) if self.compiled else self._hash_on_host(tensors)

    @torch.no_grad()
    def _hash_on_device(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        words = []
        for group in self._groups:
            sources = [tensors[c] for c in group.columns]
            if any(t is None for t in sources):  # rare: a parameter the step did not reach
                for slot, tensor in zip(group.slots, sources):
                    if tensor is None:
                        slot.zero_()
                torch._foreach_copy_([s for s, t in zip(group.slots, sources) if t is not None],
                                     [t for t in sources if t is not None])
            else:
                torch._foreach_copy_(group.slots, sources)
            words.append(group.words.to(torch.int32) if group.widen else group.words)
        # int32 products and sums wrap modulo 2**32, which is the hash's arithmetic.
        torch.mul(words[0] if len(words) == 1 else torch.cat(words), self._weights, out=self._products)
        torch.sum(self._products.view(-1, BLOCK_WORDS), dim=1, dtype=torch.int32, out=self._block_sums)
        torch.cumsum(self._block_sums, 0, dtype=torch.int64, out=self._running[1:])
        per_tensor = self._running.index_select(0, self._end) - self._running.index_select(0, self._first)
        return per_tensor.bitwise_and_(0xFFFFFFFF)


# Folds the fingerprints of a step's batch tensors, in the order they came: h = h * MIX + f (mod 2**32).
_MIX = 0x9E3779B1


class BatchHash:
    """The fingerprints of one step's batch, a column a part (the inputs; the targets), each the fold
    of every tensor handed over in that step, in order: nested tuples, lists and dicts (keys sorted)
    walked to their tensors.

    A forward only notes the tensors it is handed; they are hashed when the step's fingerprint is
    taken (``take``), the CPU ones in one call of the kernel, a device's on the device, the result
    left there until the step's row is brought home. Hashing at each forward cost a CIFAR-10 CPU
    step 80 us, out of the caches; at ``take``, with the weights' hash, it costs a tenth of that. A
    loop that overwrites a batch tensor in place before its optimizer step (one input buffer reused
    for every micro-batch) is fingerprinted as the tensor is then."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._held: list[list[torch.Tensor]] = [[] for _ in names]
        self._device_weights: dict[torch.device, torch.Tensor] = {}

    def add(self, column: int, handed: object) -> None:
        if type(handed) is tuple and len(handed) == 2 and type(handed[0]) is tuple and len(handed[0]) == 1 \
                and isinstance(handed[0][0], torch.Tensor) and type(handed[1]) is dict and not handed[1]:
            self._held[column].append(handed[0][0])  # the common call, model(batch): no walk
        else:
            self._held[column].extend(_tensors_in(handed))

    def drop(self) -> None:
        """Forget what this step was handed: the step takes no fingerprint."""
        self._held = [[] for _ in self.names]

    def take(self) -> list[int | torch.Tensor]:
        """The step's fingerprints, one a column, and a fresh start for the next step."""
        held, self._held = self._held, [[] for _ in self.names]
        # Every column's CPU tensors in one call of the kernel; a device's hashed on its device.
        on_host = iter(_host_hashes([tensor for tensors in held for tensor in tensors if tensor.device.type == "cpu"]))
        return [_fold(next(on_host) if tensor.device.type == "cpu" else self._device_hash(tensor) for tensor in tensors)
                for tensors in held]

    @torch.no_grad()
    def _device_hash(self, tensor: torch.Tensor) -> torch.Tensor:
        words = _device_words(tensor)
        weights = self._device_weights.get(tensor.device)
        if weights is None or len(weights) < len(words):
            weights = self._device_weights[tensor.device] = _weights(max(len(words), 1 << 16), tensor.device)
        # int32 products wrap modulo 2**32, the hash's arithmetic; their sum in int64 is exact.
        return torch.sum(words * weights[:len(words)], dtype=torch.int64).bitwise_and_(0xFFFFFFFF)


def _tensors_in(handed: object, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(handed, torch.Tensor):
        return [handed]
    if depth > 8:
        return []
    if isinstance(handed, dict):
        return [t for key in sorted(handed, key=str) for t in _tensors_in(handed[key], depth + 1)]
    if isinstance(handed, (tuple, list)):
        return [t for item in handed for t in _tensors_in(item, depth + 1)]
    return []


def _fold(hashes: Iterable[int | torch.Tensor]) -> int | torch.Tensor:
    """Tensors' hashes folded in order; a device's stays on the device (int64 products wrap, and
    their low 32 bits are the hash's arithmetic)."""
    folded: int | torch.Tensor = 0
    for word_hash in hashes:
        folded = (folded * _MIX + word_hash) & 0xFFFFFFFF
    return folded


def _host_hashes(tensors: list[torch.Tensor]) -> list[int]:
    """CPU tensors' fingerprints, in one call of the compiled kernel where it was built."""
    if not tensors:
        return []
    if _wordhash is None:
        return [_numpy_hash(_host_words(tensor)) for tensor in tensors]
    buffers = [_kernel_buffer(tensor) for tensor in tensors]
    out = np.zeros(len(buffers), dtype=np.uint32)
    _wordhash.hash_words(buffers, _grown_host_weights(max(words.nbytes // 4 for words in buffers)), out)
    return out.tolist()


def _device_words(tensor: torch.Tensor) -> torch.Tensor:
    """A device tensor's bytes as int32 words, narrower types widened, as the host reads them."""
    flat = tensor.detach().contiguous().reshape(-1)
    itemsize = flat.element_size()
    words = flat.view(_WORDS_OF.get(itemsize, torch.uint8))
    return words.to(torch.int32) if itemsize < 4 or itemsize not in _WORDS_OF else words
