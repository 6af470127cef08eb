"""Hydra's side of the settings: the dataclasses of ``tinylm.config`` as the schema Hydra
composes against, a composed config built into them, and Hydra's and OmegaConf's refusals as
one line naming the key. Also the checks of Lightning's Trainer arguments, which are free-form
(``trainer.*``) and so checked here rather than by a dataclass.

Each dataclass is registered in Hydra's ConfigStore (``tinylm.cli``): it gives every key its
type and its default, so the YAML files in configs/ hold only choices (presets, experiments),
Hydra itself refuses an unknown key or a value of the wrong type, and ``OmegaConf.to_object``
turns the composed config into the dataclasses, running their checks. ``build`` does the same
for plain values. Nothing here imports torch or Lightning.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from tinylm.errors import ConfigError, require

T = TypeVar("T")


def schema(cls: type) -> Any:
    """``cls`` as an OmegaConf structured config that Hydra may merge overrides into.

    A frozen dataclass makes a read-only node; the schema must take overrides, and the
    objects ``OmegaConf.to_object`` builds from it are frozen all the same. A nested section
    is built by its default factory, whose checks may have resolved a value (ModelConfig's
    kv_heads: null becomes heads); the schema keeps the field's own default instead."""
    def writable(node: Any) -> None:
        OmegaConf.set_readonly(node, False)
        section = OmegaConf.get_type(node)
        if dataclasses.is_dataclass(section):
            for f in dataclasses.fields(section):
                if f.default is not dataclasses.MISSING and f.default is not MISSING:
                    node[f.name] = f.default
                if f.metadata.get("open"):  # a free-form section: key=value adds a key, no + needed
                    OmegaConf.set_struct(node[f.name], False)
        for key in node:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                writable(child)

    cfg = OmegaConf.structured(cls)
    writable(cfg)
    return cfg


def build(cls: type[T], values: Any = None, prefix: str = "") -> T:
    """A checked ``cls`` from ``values`` (a mapping, or a config Hydra composed): every key
    checked for existence and type by OmegaConf, every value by ``cls`` itself. Raises a
    ConfigError naming the key."""
    try:
        cfg = values if isinstance(values, DictConfig) else OmegaConf.merge(schema(cls), values or {})
        _check_keys(cfg, cls)  # a key added with + (Hydra lets it through) is still unknown
        built = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise config_error(error, cls, prefix) from None
    if not isinstance(built, cls):
        raise ConfigError(f"{prefix or 'config'}: expected the settings of {cls.__name__}, got {values!r}")
    return built


def config_error(error: Exception, root: type, prefix: str = "") -> ConfigError:
    """An OmegaConf error (from composing or building ``root``) as one line naming the key."""
    key = _join(prefix, str(getattr(error, "full_key", "") or ""))
    if isinstance(error, MissingMandatoryValue):
        return ConfigError(f"{key}: is required; set it on the command line: {key}=...")
    if isinstance(error, ConfigKeyError | ConfigAttributeError):
        parent = getattr(error, "parent_node", None)
        keys = [str(k) for k in parent] if parent is not None else []
        return unknown_key(key.removeprefix(f"{prefix}.") if prefix else key, root, prefix, keys)
    if isinstance(error, ValidationError):
        hint = _field_type(root, key.removeprefix(f"{prefix}.") if prefix else key)
        if hint is not None:
            return ConfigError(f"{key}: expected {type_words(hint)}, got {error.value!r}")
    problem = str(error).splitlines()[0]
    return ConfigError(f"{key or 'config'}: {problem}; fix the value")


def _check_keys(cfg: Any, root: type, section: type | None = None, path: str = "") -> None:
    """Raise for a key of ``cfg`` that its dataclass section does not have."""
    section = root if section is None else section
    if not dataclasses.is_dataclass(section):
        return
    hints = typing.get_type_hints(section)
    for key in cfg:
        dotted = _join(path, str(key))
        if key not in hints:
            raise unknown_key(dotted, root)
        child = cfg._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _check_keys(child, root, hints[key], dotted)


def unknown_key(dotted: str, root: type, prefix: str = "", known_keys: Iterable[str] = ()) -> ConfigError:
    """``dotted`` is not a key of ``root``: name the nearest known one."""
    parent, _, leaf = dotted.rpartition(".")
    section = _field_type(root, parent) if parent else root
    if typing.get_origin(section) is dict:  # a free-form group: Lightning's Trainer arguments
        close = difflib.get_close_matches(leaf, list(known_keys), n=1)
        hint = f"did you mean {_join(prefix, _join(parent, close[0]))}? " if close else ""
        return ConfigError(f"{_join(prefix, dotted)}: unknown key; {hint}to pass a key the configs "
                           f"do not set, write +{_join(prefix, dotted)}=...")
    known = [f.name for f in dataclasses.fields(section)] if dataclasses.is_dataclass(section) else []
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {_join(prefix, _join(parent, close[0]))}? " if close else ""
    listed = f"known keys are {', '.join(known)}" if known else "it is not a setting of tinylm"
    return ConfigError(f"{_join(prefix, dotted)}: unknown key; {hint}{listed}")


def _field_type(root: type, dotted: str) -> Any:
    """The type hint of the field at ``dotted`` below dataclass ``root``, or None."""
    hint: Any = root
    for part in filter(None, dotted.split(".")):
        if not dataclasses.is_dataclass(hint):
            return None
        hints = typing.get_type_hints(hint)
        if part not in hints:
            return None
        hint = hints[part]
    return hint


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or str(key)


def type_words(hint: Any) -> str:
    """A type hint as words for an error: "an integer or null", "a list of 2", "one of 64, '16-mixed'"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        literals = [arg for arg in args if typing.get_origin(arg) is typing.Literal]
        choices = [c for arg in literals for c in typing.get_args(arg)]
        words = ["one of " + ", ".join(map(repr, choices))] if choices else []
        words += [type_words(arg) for arg in args if typing.get_origin(arg) is not typing.Literal]
        return " or ".join(dict.fromkeys(w for w in words if w))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)}"
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return "a list"
    if origin is dict:
        return "a mapping"
    return _TYPE_WORDS.get(hint, getattr(hint, "__name__", str(hint)))


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               type(None): "null"}


def as_plain(config: Any) -> dict[str, Any]:
    """A config dataclass as plain dicts and lists (for checkpoints and YAML)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


# --------------------------------------------------------------------------- trainer.*

# Trainer arguments that tinylm sets itself, with the key a user should change instead.
TRAINER_KEYS_OWNED = {
    "logger": "logger=tensorboard or logger=none",
    "callbacks": "callbacks.*",
    "default_root_dir": "hydra.run.dir",
    "gradient_clip_val": "optim.grad_clip",
    "gradient_clip_algorithm": "optim.grad_clip",
    "enable_checkpointing": "callbacks.checkpoint.*",
    "plugins": "the defaults (tinylm's plugin writes checkpoints atomically)",
}


def check_trainer_settings(trainer: dict[str, Any], open_ended: bool = False) -> None:
    """Check ``trainer.*`` as far as can be done without Lightning: no key tinylm sets itself, a
    positive ``max_steps`` (unless ``open_ended``: optim.decay_steps sets the schedule), a
    positive ``val_check_interval``."""
    for key, instead in TRAINER_KEYS_OWNED.items():
        require(key not in trainer, f"trainer.{key}", f"is set by tinylm; use {instead}")
    max_steps = trainer.get("max_steps", -1)
    require(
        isinstance(max_steps, int) and not isinstance(max_steps, bool),
        "trainer.max_steps",
        f"must be an integer, got {max_steps!r}",
    )
    steps = "give a positive number of steps"
    require(max_steps >= -1, "trainer.max_steps", f"is negative ({max_steps}); {steps}")
    require(max_steps != 0, "trainer.max_steps", f"is 0: nothing would be trained; {steps}")
    require(
        max_steps > 0 or open_ended,
        "trainer.max_steps",
        "must be set (the learning-rate schedule decays over it), "
        "or set optim.decay_steps for open-ended training",
    )
    interval = trainer.get("val_check_interval")
    require(
        interval is None
        or (isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0),
        "trainer.val_check_interval",
        f"must be a positive number of steps, got {interval!r}",
    )


def check_trainer_arguments(trainer_args: dict[str, Any], trainer_class: type) -> None:
    """Every ``trainer.*`` key is an argument of ``trainer_class`` and has a value of its type
    (from its annotations), so that a bad value is one line, not an assertion deep inside
    Lightning: ``+trainer.max_epochs=x``."""
    accepted = inspect.signature(trainer_class.__init__).parameters
    try:
        hints = typing.get_type_hints(trainer_class.__init__)
    except Exception:  # an annotation that does not resolve: check the names only
        hints = {}
    for key, value in trainer_args.items():
        if key not in accepted:
            raise ConfigError(
                f"trainer.{key}: not an argument of lightning.Trainer; "
                f"see https://lightning.ai/docs/pytorch/stable/common/trainer.html"
            )
        if key in hints and not fits(value, hints[key]):
            raise ConfigError(f"trainer.{key}: expected {type_words(hints[key])}, got {value!r}")


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value``, as Hydra composed it, is of type ``hint``; types a command line cannot
    write (classes other than these) are taken on trust."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(value == arg and type(value) is type(arg) for arg in args)
    if origin in (list, tuple, collections.abc.Iterable, collections.abc.Sequence):
        return isinstance(value, list | tuple) and all(fits(v, args[0]) for v in value if args)
    if origin is dict:
        return isinstance(value, dict)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return not isinstance(value, bool | int | float | str | list | dict) or (
        isinstance(hint, type) and isinstance(value, hint))
