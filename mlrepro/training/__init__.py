"""Training: ``start_run`` and the run objects, seeding applied, signals, distributed runs,
checkpoints, fingerprints and the orders a replayed leg follows. The layer that imports torch;
its modules import it, this package does not."""
