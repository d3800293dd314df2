"""The command line: `jobengine migrate | run | api | submit | ...`."""
