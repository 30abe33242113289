"""Review: logged runs looked up, loaded, compared and given verdicts, from Python or the CLI.
Reads the store and calls analysis; never imports torch or training."""
