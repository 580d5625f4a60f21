"""One module per Darknet layer kind, and the table of kinds.

`KINDS` maps every cfg section name a layer can have (with Darknet's aliases, e.g. [conn]) to its
class. It is made from the modules of this package: each defines one `Layer` subclass whose `kind`
is its section name, so adding a kind is adding its file.
"""
import importlib
import pkgutil

from .base import Layer


def _kinds():
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    table, todo = {}, list(Layer.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__dict__.get("kind"):
            for name in (cls.kind, *cls.aliases):
                table[name] = cls
    return table


KINDS = _kinds()
