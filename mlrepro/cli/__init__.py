"""The command line: ``mlrepro`` and the jobs' entry points. Nothing in mlrepro imports it."""
