"""What a run captures: its spec, seeding, environment, code and device, and the records it
logs (losses, fingerprints). The bottom layer: it imports no other layer of mlrepro."""
