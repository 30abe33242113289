"""The seed's CIFAR-10 training loop, made repeatable by mlrepro's DataLoader helpers.

What the seed left to chance and how it is fixed here:
- shuffle order: drawn from the loader's own generator, seeded from the spec,
  not from the global RNG; the loader draws from it the same way with 0 or N
  workers, so the order does not depend on ``num_workers``;
- worker randomness: each worker's NumPy and ``random`` are seeded from its torch
  worker seed (``seed_worker``), so workers neither repeat each other nor change
  between runs;
- kernels: cuDNN deterministic, benchmark off, deterministic algorithms on
  (set by ``start_run`` from the spec); CPU threads pinned by the spec.

With ``nproc`` above 1 the job runs under torchrun, one process a rank, with
``DistributedDataParallel`` (gloo on the CPU, NCCL on CUDA): every rank seeds the same
way, so all start from the same weights (and DDP sends rank 0's to the others all the
same); a ``DistributedSampler`` seeded from the spec gives each rank its own shard,
reshuffled each epoch by ``set_epoch``; ``bucket_cap_mb`` sets how gradients are
grouped for the all-reduce, which changes the order they are summed in.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn, optim
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mlrepro.capture.seeding import make_generator, seed_worker
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state, restore_rng_state
from mlrepro.training.progress import Progress
from mlrepro.training.runs import TrackedRun
from projects.cifar10.data import load_datasets
from projects.cifar10.model import Net
from projects.cifar10.spec import Cifar10Spec

PRINT_EVERY = 2000  # mini-batches, as in the seed
ACCURACY_METRIC = "test_accuracy"


def loader(dataset: Dataset, spec: Cifar10Spec, shuffle: bool, sampler: DistributedSampler | None = None) -> DataLoader:
    """Shuffle order and worker seeds come from the loader's own generator, ``loader.generator``,
    or under torchrun the order from the ``sampler`` (seeded from the spec, the same on every rank)."""
    return DataLoader(
        dataset,
        batch_size=spec.batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=spec.num_workers,
        worker_init_fn=seed_worker,
        # Its own generator even unshuffled: a loader without one draws its
        # workers' base seed from the global RNG every epoch.
        generator=make_generator(spec.seed),
    )


def evaluate(net: nn.Module, testloader: DataLoader, device: torch.device) -> float:
    """Fraction of test images classified correctly."""
    correct = total = 0
    net.eval()
    with torch.no_grad():
        for images, labels in testloader:
            images, labels = images.to(device), labels.to(device)
            predicted = net(images).argmax(dim=1)
            total += labels.size(0)
            correct += int((predicted == labels).sum().item())
    net.train()
    return correct / total if total else 0.0


def train(spec: Cifar10Spec, run: TrackedRun) -> None:
    device = run.device
    trainset, testset = load_datasets(spec)
    distributed = dist.is_initialized()
    # Each rank its shard; the shuffle is drawn from seed + epoch, so every rank agrees on it.
    sampler = DistributedSampler(trainset, shuffle=True, seed=spec.seed) if distributed else None
    trainloader = loader(trainset, spec, shuffle=True, sampler=sampler)
    testloader = loader(testset, spec, shuffle=False)

    net: nn.Module = Net()
    net.to(device)
    if distributed:
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                      bucket_cap_mb=spec.bucket_cap_mb)
    model = net.module if distributed else net  # its weights, as a checkpoint keeps them
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=spec.lr, momentum=spec.momentum)
    run.log_dataset(trainset)  # CIFAR-10's files, or FakeData's size, offset and shape, by their digest
    # the batch and its labels before the forward, the weights and gradients inside optimizer.step()
    run.watch(model, optimizer, loss=criterion)

    step, start_epoch, skip, running_loss = 0, 0, 0, 0.0
    epoch_start_order = trainloader.generator.get_state()
    if run.resume is not None:  # built as a fresh run would be, then put where the checkpoint was
        resume = run.resume
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        restore_rng_state(resume.rng, {"test": testloader.generator})
        step, start_epoch, skip = resume.step, resume.epoch, resume.batch_in_epoch
        # The epoch's shuffle order and worker seeds are drawn when its iterator starts:
        # going back to the generator's state at that moment redraws the same ones.
        epoch_start_order, running_loss = resume.extra["epoch_start_order"], resume.extra["running_loss"]

    rank_0 = not distributed or dist.get_rank() == 0
    if rank_0:
        print("Device:", device)
    progress = Progress(total_steps=spec.epochs * len(trainloader), epochs=spec.epochs,
                        stream=None if rank_0 else open(os.devnull, "w"))
    for epoch in range(start_epoch, spec.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        if epoch == start_epoch:
            trainloader.generator.set_state(epoch_start_order)
        else:
            running_loss = 0.0
        epoch_start_order = trainloader.generator.get_state()
        for i, (inputs, labels) in enumerate(trainloader, 0):
            if i < skip:
                continue  # done before the checkpoint; loaded all the same, so workers stay in step
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

            value = loss.item()
            run.log_loss(value)
            running_loss += value
            step += 1
            progress.update(step, epoch + 1, running_loss / (i % PRINT_EVERY + 1))
            if i % PRINT_EVERY == PRINT_EVERY - 1:
                progress.write("[%d, %5d] loss: %.3f" % (epoch + 1, i + 1, running_loss / PRINT_EVERY))
                running_loss = 0.0
            if spec.checkpoint_every and step % spec.checkpoint_every == 0:
                run.save_checkpoint(Checkpoint(
                    step=step, epoch=epoch, batch_in_epoch=i + 1, model=model.state_dict(),
                    optimizer=optimizer.state_dict(), rng=capture_rng_state({"test": testloader.generator}),
                    extra={"epoch_start_order": epoch_start_order, "running_loss": running_loss},
                ))
        skip = 0

        accuracy = evaluate(net, testloader, device)
        run.log_metric(ACCURACY_METRIC, accuracy, step=epoch)
        progress.write(f"[{epoch + 1}] accuracy on the {len(testset)} test images: {100 * accuracy:.1f} %")
    progress.close()
    if rank_0:
        print("Finished Training")
