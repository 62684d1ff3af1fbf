"""Protocol drivers: one package per protocol, each with pure parts apart from its I/O."""
