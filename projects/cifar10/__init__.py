"""The seed's CIFAR-10 job: the PyTorch tutorial CNN, shuffled, with DataLoader workers."""
