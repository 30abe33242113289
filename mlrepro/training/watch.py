"""What a run watches: a model's batches, parameters and gradients, fingerprinted at the steps a spec
asks, and the order its modules run in. The hash itself, and what it costs, is ``mlrepro.training.word_hash``.
"""

from __future__ import annotations

import numpy as np
import torch

from mlrepro.capture.fingerprints import (
    BATCH_INPUTS,
    BATCH_TARGETS,
    DATA,
    GRADIENT,
    PARAMETER,
    FingerprintRecord,
)
from mlrepro.training.word_hash import DEVICE_BLOCK_STEPS, BatchHash, Fingerprinter


class Watch:
    """A model's batches, parameters and gradients, fingerprinted every ``every`` steps, with the order
    its modules run in. ``step()`` is called once a training step, after backward and before the update.

    The batch is what the model's forward is handed (and the loss function's targets, where ``loss``
    is given), every forward of a fingerprinted step in training mode, before it runs: gradient
    accumulation's micro-batches are folded in order. Forwards in eval mode or without gradients
    (a test loop between steps) are not the training data, and are left out."""

    def __init__(self, model: torch.nn.Module, every: int, first_step: int, loss: torch.nn.Module | None = None) -> None:
        self.model = model
        self.every = every
        self.next_step = first_step  # the step the next call of step() belongs to
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.parameters = [p for _, p in named]
        self.batch = BatchHash((BATCH_INPUTS, BATCH_TARGETS) if loss is not None else (BATCH_INPUTS,))
        self.names = self.batch.names + tuple(name for name, _ in named) * 2
        self.kinds = (DATA,) * len(self.batch.names) + (PARAMETER,) * len(named) + (GRADIENT,) * len(named)
        self.module_order: list[str] = []
        self._order_hooks = _record_forward_order(model, self.module_order)  # remove themselves after a forward
        self.hooks: list[torch.utils.hooks.RemovableHandle] = []  # the optimizer's, where one calls step()
        self._stepping = False  # inside an optimizer step, its fingerprint taken
        self._batches_handed = False  # the loop hands the batches (see_batch), not the model's forward
        self.hooks.append(model.register_forward_pre_hook(self._saw_inputs, with_kwargs=True))
        if loss is not None:
            self.hooks.append(loss.register_forward_pre_hook(self._saw_targets, with_kwargs=True))
        self._fingerprinter = self._fingerprinter_for_now()
        self._steps: list[int] = []
        self._rows: list[np.ndarray] = []
        self._device_rows: list[torch.Tensor] = []
        self._device_steps: list[int] = []

    def _fingerprinter_for_now(self) -> Fingerprinter | None:
        if not self.parameters:
            return None
        return Fingerprinter(self.parameters * 2, self.parameters[0].device, kept=len(self.parameters))

    def _due(self) -> bool:
        """Whether the step now under way is fingerprinted, and the forward one of its training ones."""
        return bool(self.every) and self.next_step % self.every == 0 and not self._stepping \
            and self.model.training and torch.is_grad_enabled()

    def _saw_inputs(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._due() and not self._batches_handed:
            self.batch.add(0, (args, kwargs))

    def see_batch(self, batch: object) -> None:
        """The loop hands the step's batch itself; the model's forward is no longer looked at."""
        self._batches_handed = True
        if self._due():
            self.batch.add(0, batch)

    def _saw_targets(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self._due():  # the first argument is the model's output: computed, not data
            self.batch.add(1, (args[1:], {key: value for key, value in kwargs.items() if key != "input"}))

    def step(self) -> None:
        step, self.next_step = self.next_step, self.next_step + 1
        if self._fingerprinter is None or not self.every or step % self.every:
            self.batch.drop()
            return
        batch = self.batch.take()
        first = self.parameters[0]
        if (first.device, first.dtype) != (self._fingerprinter.device, self._fingerprinter.layout[0][1]):
            # The model moved or was converted after watch() (model.to("cuda"), model.double()).
            self._bring_home()
            self._fingerprinter = self._fingerprinter_for_now()
        gradients = [p.grad for p in self.parameters]
        row = self._fingerprinter.hash([*self.parameters, *gradients])
        if isinstance(row, np.ndarray) and not any(isinstance(part, torch.Tensor) for part in batch):
            self._steps.append(step)
            self._rows.append(np.concatenate([np.array(batch, dtype=np.uint32), row]))
            return
        device = row.device if isinstance(row, torch.Tensor) else self._fingerprinter.device
        row = torch.cat([torch.stack([torch.as_tensor(part, dtype=torch.int64, device=device) for part in batch]),
                         torch.as_tensor(row.astype(np.int64) if isinstance(row, np.ndarray) else row, device=device)])
        self._device_rows.append(row)
        self._device_steps.append(step)
        if len(self._device_rows) == DEVICE_BLOCK_STEPS:
            self._bring_home()

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """Fingerprint inside every ``optimizer.step()``, after backward and before any update.

        Without a closure, backward is done when ``step`` is called: the pre-hook fingerprints. With
        one (LBFGS; Lightning, which always passes its training step as the closure), backward runs
        inside the closure, after the pre-hook: the closure is wrapped so that the fingerprint is
        taken when it first returns, at the weights the step started from. A step whose closure is
        never called still counts, without a fingerprint."""
        awaiting = False

        def before(_optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            nonlocal awaiting
            # torch passes step's own arguments, the optimizer first: (optimizer, closure) or closure=...
            closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
            if closure is None:
                self.step()
                return None
            awaiting = True

            def fingerprinted(*closure_args: object, **closure_kwargs: object) -> object:
                nonlocal awaiting
                result = closure(*closure_args, **closure_kwargs)
                if awaiting:  # the first evaluation: this step's gradients, at its starting weights
                    awaiting = False
                    self.step()
                    # A line search's further evaluations are this step's data again, not the next one's.
                    self._stepping = True
                return result

            if "closure" in kwargs:
                return args, {**kwargs, "closure": fingerprinted}
            return (args[0], fingerprinted, *args[2:]), kwargs

        def after(_optimizer: torch.optim.Optimizer, _args: tuple, _kwargs: dict) -> None:
            nonlocal awaiting
            self._stepping = False
            if awaiting:
                awaiting = False
                self.batch.drop()
                self.next_step += 1

        self.hooks += [optimizer.register_step_pre_hook(before), optimizer.register_step_post_hook(after)]

    def _bring_home(self) -> None:
        if self._device_rows:
            block = torch.stack(self._device_rows).cpu().numpy().astype(np.uint32)  # one sync a block
            self._rows.extend(block)
            self._steps.extend(self._device_steps)
            self._device_rows, self._device_steps = [], []

    def record(self) -> FingerprintRecord:
        """Every fingerprint taken so far, brought to the host."""
        self._bring_home()
        width = len(self.names)
        values = np.array(self._rows, dtype=np.uint32).reshape(len(self._rows), width)
        return FingerprintRecord(np.array(self._steps, dtype=np.int64), values, self.names, self.kinds,
                                 tuple(self.module_order))

    def close(self) -> None:
        for handle in [*self._order_hooks, *self.hooks]:
            handle.remove()
        self._order_hooks, self.hooks = [], []


def _record_forward_order(model: torch.nn.Module, order: list[str]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that list the modules in the order the first forward calls them, then remove themselves."""
    handles: list[torch.utils.hooks.RemovableHandle] = []
    names = {module: name for name, module in model.named_modules()}

    def called(module: torch.nn.Module, _inputs: object) -> None:
        name = names.get(module)
        if name is not None and name not in order:
            order.append(name)

    def done(_module: torch.nn.Module, _inputs: object, _output: object) -> None:
        for handle in handles:
            handle.remove()
        handles.clear()

    handles.extend(module.register_forward_pre_hook(called) for module in names)
    handles.append(model.register_forward_hook(done))
    return handles
