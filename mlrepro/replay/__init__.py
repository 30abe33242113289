"""Replay: runs repeated to prove or locate a difference (``check``, ``bisect``, ``reproduce``),
each leg a job process under orders."""
