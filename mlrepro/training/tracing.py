"""A replay's trace: every module's output and gradient, and every op's output, step by step.

``mlrepro bisect`` replays two runs from a checkpoint, each in a fresh process, with
this trace on; the first event at which the two traces part names the module (and, in
the forward pass, the op and its line of code). Global module hooks find the model when its
forward is first called. Steps are counted as the run counts them, by the losses logged: the
forward of step k runs after k losses (from the run's first step). Only what is trained is
traced: the model the run watches (``run.watch``), or else an outermost module with trainable
parameters, never a transform such as torchvision's ``Normalize``, which is a module too and runs
once an image. The job stops when the model's forward starts a step after the last one traced.
Forked processes (DataLoader workers) inherit the hooks and trace nothing. In time order, a
step's trace holds:

- ``weights``: each parameter as the step's forward finds it (what the update before made);
- ``op``: the output of each torch function called inside a module, with the line that called it;
- ``forward``: each module's output;
- ``backward``: the gradient arriving at each module's output, as backward reaches it.

Forward passes under ``torch.no_grad()`` or in eval mode (an evaluation) are not traced.
"""

from __future__ import annotations

import json
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from mlrepro.training.orders import Orders, StopRequested
from mlrepro.training.word_hash import fingerprint_of

# Frames in these folders are not the user's line of code: the location is the first frame outside them.
_LIBRARY_DIRS = tuple(str(Path(module.__file__).resolve().parent) for module in (torch,)) + (
    str(Path(__file__).resolve().parents[1]),)  # all of mlrepro, not only this layer


def _location() -> str | None:
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_LIBRARY_DIRS) and not filename.startswith("<"):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return None


def _op_name(func: Any) -> str:
    """``torch.randn``, ``Tensor.add``, ``torch.nn.functional.conv2d``: as the user's code names it."""
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    for internal, public in (("_VariableFunctionsClass.", ""), ("_TensorBase.", "Tensor."), ("TensorBase.", "Tensor.")):
        name = name.replace(internal, public)
    module = getattr(func, "__module__", None) or ""
    return name if name.startswith("Tensor.") or not module.startswith("torch") else f"{module}.{name}"


class Tracer(TorchFunctionMode):
    """Records events from the first traced step to ``until``, then stops the loop."""

    def __init__(self, current_step: Callable[[], int], until: int,
                 watched: Callable[[], torch.nn.Module | None] = lambda: None) -> None:
        super().__init__()
        self.current_step = current_step  # the step the run is at: its first step + the losses logged
        self.watched = watched  # the model the run watches, once it does
        self.step = -1
        self.until = until
        self.events: list[dict[str, Any]] = []
        self._names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        # The modules running now, outermost first; None for one that is not traced (a transform,
        # an evaluation) and for everything it calls.
        self._stack: list[str | None] = []
        self._weights_of_step: int | None = None
        self._hashing = False  # the ops of a fingerprint are not the job's
        self._step_model: str | None = None  # the model a step ran, once its forward began
        self._watched_model: torch.nn.Module | None = None
        self._watched_modules: set[torch.nn.Module] = set()
        self._pid = os.getpid()  # a forked DataLoader worker inherits the hooks: it traces nothing

    def _event(self, phase: str, where: str, tensor: torch.Tensor, location: str | None = None,
               step: int | None = None) -> None:
        self._hashing = True
        try:
            self.events.append({"step": self.step if step is None else step, "phase": phase, "where": where,
                                "hash": fingerprint_of(tensor), "shape": list(tensor.shape), "location": location})
        finally:
            self._hashing = False

    def _traced(self, module: torch.nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _trained(self, module: torch.nn.Module) -> bool:
        """Whether an outermost module's forward is a training step's: the watched model's, or where
        nothing is watched, a module with parameters to train."""
        model = self.watched()
        if model is None:
            return any(parameter.requires_grad for parameter in module.parameters())
        if model is not self._watched_model:  # its tree, named from the model: a LightningModule's
            self._watched_model, self._watched_modules = model, set(model.modules())  # step calls self.net
            for name, inner in model.named_modules():
                self._names.setdefault(inner, name or type(model).__name__)
        return module in self._watched_modules

    def before_forward(self, module: torch.nn.Module, _inputs: Any) -> None:
        if os.getpid() != self._pid:
            return
        if self._stack:
            self._stack.append(None if self._stack[0] is None else self._names.get(module, type(module).__name__))
            return
        if not (self._traced(module) and self._trained(module)):
            self._stack.append(None)
            return
        if module not in self._names:  # the model: name its tree
            for name, inner in module.named_modules():
                self._names.setdefault(inner, name or type(module).__name__)
        self.step = self.current_step()
        if self.step > self.until:
            raise StopRequested
        if self._weights_of_step != self.step:  # the step's first forward finds the weights the update made
            self._weights_of_step = self.step
            for parameter_name, parameter in (self._watched_model or module).named_parameters():
                self._event("weights", parameter_name, parameter)
        self._stack.append(self._names[module])
        self._step_model = self._names.get(self._watched_model, self._names[module]) \
            if self._watched_model is not None else self._names[module]

    def after_forward(self, module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if os.getpid() != self._pid or not self._stack:
            return
        name = self._stack.pop()
        if name is None or not self._traced(module):
            return
        for index, tensor in enumerate(t for t in tree_leaves(output) if isinstance(t, torch.Tensor)):
            where = name if index == 0 else f"{name}[{index}]"
            self._event("forward", where, tensor)
            if tensor.requires_grad:
                step = self.step
                tensor.register_hook(lambda grad, where=where, step=step: self._event("backward", where, grad, step=step))

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if self._hashing or not torch.is_grad_enabled() or not isinstance(result, torch.Tensor) \
                or os.getpid() != self._pid:
            return result
        if self._stack:
            if self._stack[-1] is not None:
                self._event("op", f"{self._stack[-1]}: {_op_name(func)}", result, _location())
        elif self._step_model is not None and self.current_step() == self.step:
            # Between the model's forward and the step's loss: the loss function, or a
            # LightningModule's training_step around its children, in the step's own code.
            self._event("op", f"{self._step_model}: {_op_name(func)}", result, _location())
        return result


@contextmanager
def tracing(orders: Orders | None, first_step: int, current_step: Callable[[], int],
            watched: Callable[[], torch.nn.Module | None] = lambda: None) -> Iterator[None]:
    """Trace the loop inside, as the orders ask; nothing without a trace in them."""
    if orders is None or orders.trace is None:
        yield
        return
    tracer = Tracer(current_step, orders.trace_until if orders.trace_until is not None else sys.maxsize, watched)
    handles = [torch.nn.modules.module.register_module_forward_pre_hook(tracer.before_forward),
               torch.nn.modules.module.register_module_forward_hook(tracer.after_forward)]
    try:
        with tracer:
            yield
    finally:
        for handle in handles:
            handle.remove()
        Path(orders.trace).write_text(json.dumps({"first_step": first_step, "events": tracer.events}))
