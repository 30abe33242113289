"""Training: ``start_run`` and the run objects, seeding applied, the resumable loop (epochs, batches,
checkpoints when due), signals, distributed runs, checkpoints, fingerprints, the orders a replayed leg
follows and the zygote its legs are forked from. The layer that imports torch; its modules import it,
this package does not."""
