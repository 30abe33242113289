"""Fingerprints of tensors: what changes them, what does not, and what they cost nobody but the hash."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlrepro.fingerprints import GRADIENT, PARAMETER
from mlrepro.watch import Fingerprinter, Watch, fingerprint_of

CPU = torch.device("cpu")


def fingerprint(tensor: torch.Tensor, on_host: bool | None = None) -> int:
    return int(Fingerprinter([tensor], CPU, on_host=on_host).hash([tensor])[0])


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 5000), position=st.integers(0, 10**6), seed=st.integers(0, 2**31))
def test_one_ulp_anywhere_changes_the_fingerprint(size: int, position: int, seed: int) -> None:
    values = torch.randn(size, generator=torch.Generator().manual_seed(seed))
    moved = values.clone()
    i = position % size
    moved[i] = torch.nextafter(moved[i], torch.tensor(float("inf")))
    assert fingerprint(values) != fingerprint(moved)


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.bool])
def test_the_host_sum_and_the_device_sum_agree_for_every_dtype(dtype: torch.dtype) -> None:
    """The GPU's way (torch block sums) runs here on the CPU: it must give the host's numbers."""
    generator = torch.Generator().manual_seed(1)
    tensors = [(torch.randn(shape, generator=generator) * 100).to(dtype) for shape in [(7,), (3, 65), (130,)]]
    host = Fingerprinter(tensors, CPU, on_host=True).hash(tensors)
    device = Fingerprinter(tensors, CPU, on_host=False).hash(tensors)
    assert isinstance(host, np.ndarray) and host.dtype == np.uint32
    assert host.tolist() == device.tolist()
    assert host.tolist() == [fingerprint_of(tensor) for tensor in tensors]  # the replay's one-tensor way


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
    kept = Fingerprinter(parameters, CPU, kept=len(parameters))

    def as_new() -> list[int]:
        return Fingerprinter(parameters, CPU).hash(parameters).tolist()

    first = kept.hash(parameters).tolist()
    assert first == as_new()
    with torch.no_grad():
        for parameter in parameters:
            parameter.mul_(3)
    assert kept.hash(parameters).tolist() == as_new() != first
    parameters[0].data = torch.randn(4, 5, generator=generator)
    assert kept.hash(parameters).tolist() == as_new()


def test_a_gradient_that_requires_grad_hashes_as_its_values() -> None:
    """backward(create_graph=True) leaves gradients that require grad: NumPy cannot view them directly."""
    values = torch.randn(6, 2)
    assert fingerprint(values.clone().requires_grad_()) == fingerprint(values)


def test_a_gradient_never_computed_hashes_as_zeros() -> None:
    shape = torch.zeros(5)
    fingerprinter = Fingerprinter([shape, shape], CPU)
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
    assert record.values.shape == (2, 8) and record.values.dtype == np.uint32
    assert record.names[:4] == ("last.weight", "last.bias", "first.weight", "first.bias") == record.names[4:]
    assert record.kinds == (PARAMETER,) * 4 + (GRADIENT,) * 4
    assert record.module_order == ("", "first", "last")
    assert len(set(record.values[0])) == 8  # every tensor its own fingerprint
    assert (record.values[0][:4] != record.values[1][:4]).all()  # SGD moved every weight
    # The gradient of sum() for last.bias is the batch size at every step: the same bits, the same fingerprint.
    assert record.values[0][5] == record.values[1][5]


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
