"""What a run captures: its spec (a class, or a job's own argparse parser), seeding, environment,
code and device, and the records it logs (losses, fingerprints). The bottom layer: it imports no
other layer of mlrepro."""
