"""The built-in pruning methods' catalogue entries (lib/catalogue.py): one module each, its
Kconfig fragment beside it (`Kconfig.<name>`). `BUILTIN` is their menu, matrix and report
order. The dense baseline (`none`) is the framework's own, not a method."""

BUILTIN = ("magnitude", "movement", "state", "random", "layermagnitude")
