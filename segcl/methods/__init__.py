"""The registry of training methods: a name -> a :class:`~segcl.methods.base.Method`.

Two kinds of methods are registered here:

- pre-training methods (:class:`~segcl.methods.base.PretrainMethod`), chosen by
  ``segcl pretrain --method NAME``: exactly one per run;
- fine-tuning methods (:class:`~segcl.methods.base.FinetuneMethod`), additions to the
  supervised fine-tuning that the config switches on (``--semi``, ``--contrast cross-image``,
  ``--pseudo-labels``): any number per run, :func:`active` lists them.

Each method is one module of this package that subclasses its kind's base class and registers
itself::

    from segcl.methods import register
    from segcl.methods.base import PretrainMethod

    @register
    class MyMethod(PretrainMethod):
        name = "mine"
        help = "one line for segcl pretrain --help"
        ...

Built-in methods are imported (and so registered) at the end of this module; a new built-in
method adds its import there. Registration order is also the order in which the fine-tuning
step composes the active methods (a method that reads the pseudo-labels of another, like
``cross-image`` reading ``semi``'s, comes after it). The engines and the CLI only ever call
:func:`get`, :func:`names`, :func:`describe` and :func:`active`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from segcl.errors import ConfigError
from segcl.methods.base import KINDS, LABEL_USE, FinetuneMethod, Method, PretrainMethod

if TYPE_CHECKING:
    from segcl.config import FinetuneConfig

__all__ = [
    "KINDS",
    "FinetuneMethod",
    "Method",
    "PretrainMethod",
    "active",
    "describe",
    "get",
    "names",
    "register",
    "unregister",
]

M = TypeVar("M")  # a Method subclass or instance

_REGISTRY: dict[str, Method] = {}


def register(method: M) -> M:
    """Register a method class (instantiated without arguments) or instance; usable as a class
    decorator. Names are unique over all kinds."""
    instance = method() if isinstance(method, type) else method
    if not isinstance(instance, Method):
        raise TypeError(f"{method!r} is not a segcl.methods.base.Method")
    name, kind = instance.name, instance.kind
    if not name or not name.replace("-", "").replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"method name must be a lower-case word, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if not instance.help:
        raise ValueError(f"method {name!r} has no help text")
    if isinstance(instance, FinetuneMethod) and (
        not instance.flag or instance.unlabelled not in LABEL_USE
    ):
        raise ValueError(f"fine-tuning method {name!r} needs a flag and unlabelled in "
                         f"{LABEL_USE}")
    if name in _REGISTRY and type(_REGISTRY[name]) is not type(instance):
        raise ValueError(f"method {name!r} is already registered ({_REGISTRY[name]!r})")
    _REGISTRY[name] = instance
    return method


def unregister(name: str) -> None:
    """Remove a registered method (tests, plugins); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def names(kind: str | None = None) -> tuple[str, ...]:
    """Registered method names (of one ``kind``), in registration order."""
    return tuple(n for n, m in _REGISTRY.items() if kind is None or m.kind == kind)


def get(name: str, kind: str | None = None) -> Method:
    """The method registered as ``name`` (and of ``kind`` when given); a
    :class:`~segcl.errors.ConfigError` naming the choices otherwise."""
    method = _REGISTRY.get(name)
    if method is None:
        raise ConfigError(f"unknown method '{name}'; choose {', '.join(names(kind))}")
    if kind is not None and method.kind != kind:
        raise ConfigError(f"'{name}' is a {method.kind} method, not a {kind} method; choose "
                          f"{', '.join(names(kind)) or 'none are registered'}")
    return method


def describe(kind: str) -> str:
    """``"a (help), b (help) or c (help)."``: the methods of ``kind`` for a CLI help text."""
    items = [f"{n} ({_REGISTRY[n].help})" for n in names(kind)]
    text = items[-1] if len(items) < 2 else f"{', '.join(items[:-1])} or {items[-1]}"
    return text + "."


def active(cfg: FinetuneConfig) -> tuple[FinetuneMethod, ...]:
    """The fine-tuning methods ``cfg`` switches on, in registration order (the order in which
    the training step composes them)."""
    found = (_REGISTRY[n] for n in names("finetune"))
    return tuple(m for m in found if isinstance(m, FinetuneMethod) and m.enabled(cfg))


# built-in methods, in the order they are listed (and composed); each registers itself on import
from segcl.methods import simclr, moco, multiscale, supcon  # noqa: E402, F401, I001
from segcl.methods import pseudo_labels, semi, cross_image  # noqa: E402, F401
