"""Attention classes defined in a notebook cell, which have no file to name.

``tinylm.train(attention=MyAttention)`` registers the class here and trains with
``model.attention=notebook@<hash>:MyAttention``: the class's name and the first digits of the
SHA-256 of its source. That string is all a checkpoint records of it, never code; loading the
model asks for the class again (``tinylm.load(run, attention=MyAttention)``), and a class whose
source changed since is named as such.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal

from tinylm.config import NOTEBOOK_CLASS

_CLASSES: dict[str, type] = {}


def source_of(cls: type) -> str:
    """The class's source; for a class of a notebook cell (no file for ``inspect``), the source of
    each of its functions (IPython keeps cells' lines); failing that, their bytecode."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    parts = []
    for name, member in sorted(vars(cls).items()):
        if inspect.isfunction(member):
            try:
                parts.append(inspect.getsource(member))
            except (OSError, TypeError):
                parts.append(f"{name}:{marshal.dumps(member.__code__).hex()}")
    return "\n".join(parts)


def source_sha256(cls: type) -> str:
    return hashlib.sha256(source_of(cls).encode("utf-8")).hexdigest()


def class_hash(cls: type) -> str:
    """The first digits of ``source_sha256``, as model.attention shows them."""
    return source_sha256(cls)[:12]


def register(cls: type) -> str:
    """Make ``cls`` available to training and loading in this process; its model.attention."""
    if not isinstance(cls, type):
        raise TypeError(f"attention= takes a class (not an instance), got {cls!r}")
    spec = f"{NOTEBOOK_CLASS}@{class_hash(cls)}:{cls.__name__}"
    _CLASSES[spec] = cls
    return spec


def registered(spec: str) -> type | None:
    """The class ``spec`` names if it is a notebook class registered in this process."""
    return _CLASSES.get(spec)
