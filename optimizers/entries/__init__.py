"""The built-in optimizers' catalogue entries (lib/catalogue.py): one module each, its Kconfig
fragment beside it (`Kconfig.<name>`). `BUILTIN` is their menu, matrix and report order."""

BUILTIN = ("sgd", "adam", "adamw", "adamwadv", "adamwspam", "adamwprune")
