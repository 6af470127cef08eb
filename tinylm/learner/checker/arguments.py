"""The command line of ``tinylm check-attention`` as Hydra overrides, before Hydra reads it:
the class may be named without a key (``tinylm check-attention my_attn.py:MyAttention``), and
the ``--flags`` of the old grammar are refused with one line giving their key=value spelling.
Torch-free: it runs before the config is checked."""

from __future__ import annotations

from collections.abc import Sequence

from tinylm.errors import ConfigError

OLD_FLAGS = {"--d-model": "d_model", "--heads": "heads", "--kwargs": "kwargs", "--map": "map"}


def overrides(arguments: Sequence[str]) -> list[str]:
    """``arguments`` with a bare ``FILE.py:Class`` as ``attention=FILE.py:Class``; raises a
    ConfigError for an old ``--flag``, naming its new spelling."""
    result = []
    for i, argument in enumerate(arguments):
        flag, _, inline = argument.partition("=")
        if flag.replace("_", "-") in OLD_FLAGS:
            values = [inline] if inline else list(_values(arguments[i + 1:]))
            raise ConfigError(f"{flag}: tinylm takes key=value; write {new_spelling(flag, values)}")
        if _names_a_class(argument):
            if (given := next((a for a in result if a.startswith("attention=")), None)) is not None:
                raise ConfigError(f"attention: given twice ({given!r} and {argument!r}); name one class")
            argument = f"attention={argument}"
        result.append(argument)
    return result


def _names_a_class(argument: str) -> bool:
    """``FILE.py:Class`` (or a bare ``FILE.py``, which the check then refuses with the form)."""
    bare = "=" not in argument and not argument.startswith("-")
    return bare and (":" in argument or argument.endswith(".py"))


def _values(following: Sequence[str]) -> list[str]:
    """The words an old flag took: those after it, up to the next flag."""
    values = []
    for word in following:
        if word.startswith("-"):
            break
        values.append(word)
    return values


def new_spelling(flag: str, values: Sequence[str]) -> str:
    """The key=value words for ``flag`` given ``values``: ``--kwargs a=1 b=2`` is
    ``kwargs.a=1 kwargs.b=2``, ``--map q=W_Q,k=W_K`` is ``map.q=W_Q map.k=W_K``."""
    key = OLD_FLAGS[flag.replace("_", "-")]
    pairs = [item for value in values for item in value.split(",")] if key == "map" else list(values)
    pairs = [p for p in pairs if "=" in p]
    if key == "kwargs":
        return " ".join(f"kwargs.{p}" for p in pairs) or "kwargs.NAME=VALUE"
    if key == "map":
        return " ".join(f"map.{p}" for p in pairs) or "map.q=W_Q map.k=W_K map.v=W_V map.o=W_O"
    return f"{key}={values[0] if values and '=' not in values[0] else '...'}"
