"""Fingerprints of tensors: what changes them, what does not, and what they cost nobody but the hash."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlrepro.capture.fingerprints import DATA, GRADIENT, PARAMETER
from mlrepro.training import word_hash
from mlrepro.training.watch import Watch
from mlrepro.training.word_hash import BatchHash, Fingerprinter, _fold, fingerprint_of

CPU = torch.device("cpu")
NOT_BUILT = "mlrepro.training._wordhash was not built (no C compiler at install)"
# The three ways to the same numbers, all run here on the CPU: the compiled kernel, NumPy
# (where the kernel was not built), and torch's block sums (a GPU's way).
WAYS = {
    "compiled": pytest.param({"compiled": True}, id="compiled",
                             marks=pytest.mark.skipif(word_hash._wordhash is None, reason=NOT_BUILT)),
    "numpy": pytest.param({"compiled": False}, id="numpy"),
    "device": pytest.param({"on_host": False}, id="device"),
}


def fingerprint(tensor: torch.Tensor, **way: bool) -> int:
    return int(Fingerprinter([tensor], CPU, **way).hash([tensor])[0])


def test_the_compiled_hash_was_built_where_ci_requires_it() -> None:
    """CI installs with gcc at hand: there the kernel must be built, or its tests would skip unseen."""
    if os.environ.get("MLREPRO_REQUIRE_COMPILED") != "1":
        pytest.skip("MLREPRO_REQUIRE_COMPILED is not 1")
    assert word_hash._wordhash is not None, NOT_BUILT
    assert Fingerprinter([torch.zeros(3)], CPU).compiled


@pytest.mark.parametrize("way", WAYS.values())
@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5000), position=st.integers(0, 10**6), seed=st.integers(0, 2**31))
def test_one_ulp_anywhere_changes_the_fingerprint(way: dict[str, bool], size: int, position: int, seed: int) -> None:
    values = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    moved = values.clone()
    i = position % size
    moved[i] = torch.nextafter(moved[i], torch.tensor(float("inf")))
    assert fingerprint(values, **way) != fingerprint(moved, **way)


def test_it_depends_on_the_order_of_the_values_not_only_on_which_they_are() -> None:
    values = torch.arange(1.0, 9.0)
    assert fingerprint(values) != fingerprint(values.flip(0))
    swapped = values.clone()
    swapped[[2, 5]] = swapped[[5, 2]]
    assert fingerprint(values) != fingerprint(swapped)


def test_equal_bits_give_equal_fingerprints_and_the_sign_of_zero_counts() -> None:
    assert fingerprint(torch.tensor([1.5, -2.0])) == fingerprint(torch.tensor([1.5, -2.0]))
    assert fingerprint(torch.tensor([0.0, 1.0])) != fingerprint(torch.tensor([-0.0, 1.0]))


def test_a_tensors_fingerprint_does_not_depend_on_the_tensors_beside_it() -> None:
    tensor = torch.randn(300)
    alone = fingerprint(tensor)
    among = Fingerprinter([torch.zeros(17), tensor, torch.zeros(4, 4)], CPU).hash([torch.ones(17), tensor, torch.eye(4)])
    assert int(among[1]) == alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64,
                                   torch.bool, torch.complex128])
@pytest.mark.parametrize("way", [WAYS["compiled"], WAYS["device"]])
def test_every_way_gives_numpys_numbers_for_every_dtype_and_layout(dtype: torch.dtype, way: dict[str, bool]) -> None:
    """The compiled kernel reads contiguous tensors itself and leaves the rest (not contiguous, a
    narrower dtype widened, empty, missing) to NumPy; the GPU's way copies all of them. Each must
    give what NumPy gives, and the replay's one-tensor ``fingerprint_of`` too."""
    generator = torch.Generator().manual_seed(1)
    tensors = [(torch.randn(shape, generator=generator) * 100).to(dtype) for shape in [(7,), (3, 65), (130,), ()]]
    tensors += [tensors[1].t(), tensors[2][::3], torch.empty(0, dtype=dtype)]
    expected = Fingerprinter(tensors, CPU, compiled=False).hash(tensors)
    got = Fingerprinter(tensors, CPU, **way).hash(tensors)
    assert isinstance(expected, np.ndarray) and expected.dtype == np.uint32
    assert got.tolist() == expected.tolist()
    assert expected.tolist() == [fingerprint_of(tensor) for tensor in tensors]
    with_one_missing = [*tensors[:-1], None]
    assert (Fingerprinter(tensors, CPU, **way).hash(with_one_missing).tolist()
            == Fingerprinter(tensors, CPU, compiled=False).hash(with_one_missing).tolist())


def test_an_install_without_the_kernel_says_so_once_and_computes_the_same_numbers(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = [torch.randn(5), torch.randn(3, 4)]
    expected = Fingerprinter(tensors, CPU).hash(tensors).tolist()
    monkeypatch.setattr(word_hash, "_wordhash", None)
    monkeypatch.setattr(word_hash, "_said_missing", False)
    with pytest.warns(RuntimeWarning, match="compiled fingerprint hash was not built"):
        assert Fingerprinter(tensors, CPU).hash(tensors).tolist() == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once a process, not at every run
        Fingerprinter(tensors, CPU)


@pytest.mark.skipif(word_hash._wordhash is None, reason=NOT_BUILT)
def test_the_kernel_reads_nothing_beyond_what_it_is_given() -> None:
    """It takes buffers, not addresses, and checks every length itself: a buffer longer than the
    weights, one not a whole number of words, one not contiguous, or an out of another length is
    refused before anything is read, whatever the caller passes."""
    words, weights, out = np.arange(8, dtype=np.int32), np.ones(4, dtype=np.int32), np.zeros(1, dtype=np.uint32)
    for buffers, error in [([words], ValueError), ([np.arange(5, dtype=np.int8)], ValueError),
                           ([words[:8:2]], ValueError), ([words[:4], None], ValueError), ([4096], TypeError)]:
        with pytest.raises(error):
            word_hash._wordhash.hash_words(buffers, weights, out)
    with pytest.raises(TypeError):
        word_hash._wordhash.hash_words([words[:4]], weights.astype(np.int64), out)
    word_hash._wordhash.hash_words([words[:4]], weights, out)
    assert out.tolist() == [0 + 1 + 2 + 3]
    word_hash._wordhash.hash_words([None], weights, out)  # left as it was
    assert out.tolist() == [6]


def test_kept_tensors_are_hashed_as_they_are_now_after_updates_in_place_and_a_new_storage() -> None:
    """A parameter's view is made once: it must still show the parameter's bytes after the optimizer
    changed them in place and after ``p.data = ...``; the tensors a view cannot show (not contiguous,
    a narrower dtype, empty) are read again at every call."""
    generator = torch.Generator().manual_seed(2)
    parameters = [torch.nn.Parameter(torch.randn(4, 5, generator=generator)),
                  torch.nn.Parameter(torch.randn(5, 4, generator=generator).t()),
                  torch.nn.Parameter(torch.randn(6, generator=generator).half()),
                  torch.nn.Parameter(torch.randn(3, generator=generator).double()),
                  torch.nn.Parameter(torch.empty(0)),
                  torch.nn.Parameter(torch.tensor(1.5))]
    kept = Fingerprinter(parameters, CPU, kept=len(parameters), compiled=False)

    def as_new() -> list[int]:
        return Fingerprinter(parameters, CPU, on_host=False).hash(parameters).tolist()

    first = kept.hash(parameters).tolist()
    assert first == as_new()
    with torch.no_grad():
        for parameter in parameters:
            parameter.mul_(3)
    assert kept.hash(parameters).tolist() == as_new() != first
    parameters[0].data = torch.randn(4, 5, generator=generator)
    assert kept.hash(parameters).tolist() == as_new()


@pytest.mark.parametrize("way", [WAYS["compiled"], WAYS["numpy"]])
def test_a_tensor_of_another_size_than_the_watched_one_is_refused_not_read_past(way: dict[str, bool]) -> None:
    """``p.data = smaller`` gives a parameter another shape: the kernel must not read the old
    shape's count of words from the new, smaller memory."""
    parameter = torch.nn.Parameter(torch.randn(100_000))
    fingerprinter = Fingerprinter([parameter], CPU, kept=1, **way)
    fingerprinter.hash([parameter])
    parameter.data = torch.randn(10)
    with pytest.raises(ValueError):
        fingerprinter.hash([parameter])


@pytest.mark.parametrize("way", WAYS.values())
def test_a_gradient_that_requires_grad_hashes_as_its_values(way: dict[str, bool]) -> None:
    """backward(create_graph=True) leaves gradients that require grad: NumPy cannot view them directly."""
    values = torch.randn(6, 2)
    assert fingerprint(values.clone().requires_grad_(), **way) == fingerprint(values, **way)


@pytest.mark.parametrize("way", WAYS.values())
def test_a_gradient_never_computed_hashes_as_zeros(way: dict[str, bool]) -> None:
    shape = torch.zeros(5)
    fingerprinter = Fingerprinter([shape, shape], CPU, **way)
    assert fingerprinter.hash([torch.ones(5), None]).tolist() == fingerprinter.hash([torch.ones(5), torch.zeros(5)]).tolist()


class Branches(torch.nn.Module):
    """Registered in one order, called in another: compare reports in the order the data flows."""

    def __init__(self) -> None:
        super().__init__()
        self.last = torch.nn.Linear(3, 1)
        self.first = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.first(x))


def test_watch_takes_every_nth_step_names_both_kinds_and_learns_the_forward_order() -> None:
    torch.manual_seed(0)
    model = Branches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = Watch(model, every=3, first_step=5)
    optimizer.register_step_pre_hook(lambda *_: watch.step())
    for _ in range(7):  # steps 5..11
        optimizer.zero_grad()
        model(torch.ones(4, 2)).sum().backward()
        optimizer.step()
    record = watch.record()
    assert record.steps.tolist() == [6, 9]
    assert record.values.shape == (2, 9) and record.values.dtype == np.uint32
    assert record.names[0] == "batch.inputs" and record.kinds[0] == DATA
    assert record.names[1:5] == ("last.weight", "last.bias", "first.weight", "first.bias") == record.names[5:]
    assert record.kinds[1:] == (PARAMETER,) * 4 + (GRADIENT,) * 4
    assert record.module_order == ("", "first", "last")
    assert len(set(record.values[0])) == 9  # every tensor its own fingerprint
    assert (record.values[0][1:5] != record.values[1][1:5]).all()  # SGD moved every weight
    # The same batch at both steps, and the gradient of sum() for last.bias is the batch size at every
    # step: the same bits, the same fingerprint.
    assert record.values[0][0] == record.values[1][0] == fingerprint_of(torch.ones(4, 2))
    assert record.values[0][6] == record.values[1][6]


def test_the_batch_is_fingerprinted_before_the_forward_in_order_and_only_in_training() -> None:
    """Inputs and targets each fold every training forward of a fingerprinted step, micro-batches in
    order; a test loop between steps (eval mode, no gradients) is not the training data."""
    torch.manual_seed(0)
    model, loss = torch.nn.Linear(3, 1), torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = Watch(model, every=1, first_step=0, loss=loss)
    watch.follow(optimizer)
    data = torch.arange(24, dtype=torch.float32).reshape(8, 3)
    targets = torch.arange(8, dtype=torch.float32).reshape(8, 1)
    for step in range(2):
        optimizer.zero_grad()
        for micro in range(2):  # gradient accumulation: two micro-batches a step
            rows = slice(4 * step + 2 * micro, 4 * step + 2 * micro + 2)
            loss(model(data[rows]), targets[rows]).backward()
        model.eval()
        with torch.no_grad():
            model(torch.randn(5, 3))  # evaluated between steps: not part of any batch
        model.train()
        optimizer.step()
    record = watch.record()
    assert record.names[:2] == ("batch.inputs", "batch.targets") and record.kinds[:2] == (DATA, DATA)

    def folded(*tensors: torch.Tensor) -> int:
        value = 0
        for tensor in tensors:
            value = (value * 0x9E3779B1 + fingerprint_of(tensor)) % 2**32
        return value

    assert record.values[:, 0].tolist() == [folded(data[0:2], data[2:4]), folded(data[4:6], data[6:8])]
    assert record.values[:, 1].tolist() == [folded(targets[0:2], targets[2:4]), folded(targets[4:6], targets[6:8])]
    swapped = BatchHash(("batch.inputs",))
    swapped.add(0, (data[2:4],))
    swapped.add(0, (data[0:2],))
    assert swapped.take()[0] != record.values[0, 0]  # another order of the same rows: another fingerprint


def test_a_batch_hashed_on_a_device_equals_the_host_hash() -> None:
    """The GPU's way (torch ops, left on the device) and the CPU's (the kernel or NumPy) give the same
    numbers: here both run on the CPU, for float, integer and boolean batches."""
    batch = (torch.randn(4, 3, 8, 8), torch.arange(100, dtype=torch.int64), torch.rand(33) > 0.5, torch.randn(6, 5).t())
    hashes = BatchHash(("batch.inputs",))
    for tensor in batch:
        assert int(hashes._device_hash(tensor)) == fingerprint_of(tensor)
    # A step's fold of them, kept on the device (int64 products that wrap) or on the host, is the same.
    assert int(_fold(hashes._device_hash(tensor) for tensor in batch)) == _fold(fingerprint_of(t) for t in batch)


def test_watching_again_replaces_the_old_watch_and_a_model_converted_after_watch_is_followed() -> None:
    torch.manual_seed(0)
    model = Branches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = Watch(model, every=1, first_step=0)
    first.hooks.append(optimizer.register_step_pre_hook(lambda *_: first.step()))
    first.close()
    second = Watch(model, every=1, first_step=0)
    second.hooks.append(optimizer.register_step_pre_hook(lambda *_: second.step()))
    model.double()  # converted after watch(), as model.to("cuda") moves it: the watch follows
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.ones(4, 2, dtype=torch.float64)).sum().backward()
        optimizer.step()
    assert len(first.record()) == 0 and len(second.record()) == 2


def _by_hand_and_watched(make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
                         steps: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The same training twice: fingerprints taken by hand after each step's backward, and by a
    watch that follows the optimizer, which calls a closure."""
    x, y = torch.linspace(-1, 1, 16).reshape(16, 1), torch.linspace(0, 3, 16).reshape(16, 1)
    records = []
    for by_hand in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
        optimizer = make_optimizer(list(model.parameters()))
        watch = Watch(model, every=1, first_step=0)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        if not by_hand:
            watch.follow(optimizer)
        for _ in range(steps):
            if by_hand:
                closure()
                watch.step()  # after backward, before the update: what a loop without hooks does
            optimizer.step(closure)
        records.append(watch.record())
        watch.close()
    hand, watched = records
    assert hand.steps.tolist() == watched.steps.tolist() == list(range(steps))
    # The batch is the closure's forward, once a step however often a line search calls it again.
    assert watched.names[0] == "batch.inputs" and set(watched.values[:, 0]) == {fingerprint_of(x)}
    return hand.values[:, 1:], watched.values[:, 1:]


@pytest.mark.parametrize("make_optimizer", [
    pytest.param(lambda params: torch.optim.LBFGS(params, lr=0.1, max_iter=3), id="LBFGS"),
    pytest.param(lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9), id="SGD with a closure"),
])
def test_gradients_are_fingerprinted_after_a_closures_backward_as_by_hand(
    make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
) -> None:
    """LBFGS and Lightning call backward inside optimizer.step(closure): a pre-hook alone would see
    no gradient at step 0 and the last step's after that."""
    hand, watched = _by_hand_and_watched(make_optimizer)
    assert (hand == watched).all()
    assert (hand[:, hand.shape[1] // 2:] != 0).all()  # the gradients were there to fingerprint


def test_a_step_whose_closure_is_never_called_still_counts() -> None:
    class IgnoresItsClosure(torch.optim.Optimizer):
        def __init__(self, params: object) -> None:
            super().__init__(params, {"lr": 0.1})

        @torch.no_grad()
        def step(self, closure: object = None) -> None:  # type: ignore[override]
            for group in self.param_groups:
                for parameter in group["params"]:
                    parameter.sub_(0.1 * parameter.grad)

    model = torch.nn.Linear(2, 1)
    optimizer = IgnoresItsClosure(model.parameters())
    watch = Watch(model, every=1, first_step=0)
    watch.follow(optimizer)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step(lambda: None)  # never called: no fingerprint, but the step is counted
    optimizer.step()  # no closure: fingerprinted at once, as step 1
    assert watch.record().steps.tolist() == [1] and watch.next_step == 2
