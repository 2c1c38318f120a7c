"""One registry of named plug-ins, shared by the credit rules, the inverse kinds and the inverse losses.

Each of those modules keeps a :class:`Registry` of instances of its base
class and exposes ``register_*``, ``known_*`` and ``get_*`` functions that
call it, so every plug-in family refuses the same mistakes with the same
words: an object that is not of the family, a missing name, a taken name.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from .errors import GraphError

T = TypeVar("T")


class Registry(Generic[T]):
    """Instances of ``base`` by name, in registration order.

    ``what`` names one entry in messages (``"credit rule"``); ``register_name``
    is the public function users call (named in the refusal of a wrong object);
    ``validate``, if given, refuses an entry the family cannot take.
    """

    def __init__(self, what: str, base: type, register_name: str, validate=None):
        self.what, self.base, self.register_name = what, base, register_name
        #: Called with each new entry before it is stored (a family's own refusals), or None.
        self.validate = validate
        self._items: dict[str, T] = {}

    def register(self, obj, overwrite: bool = False) -> T:
        """Register an instance, or a subclass of ``base`` (instantiated), under its ``name``; return the instance."""
        if isinstance(obj, type) and issubclass(obj, self.base):
            obj = obj()
        if not isinstance(obj, self.base):
            article = "an" if self.base.__name__[0] in "AEIOU" else "a"
            raise GraphError(f"{self.register_name} expects {article} {self.base.__name__} (instance or subclass), "
                             f"got {obj!r}")
        name = obj.name
        if not isinstance(name, str) or not name:
            raise GraphError(f"{self.what} {type(obj).__name__} has no name (set the class attribute 'name')")
        if name in self._items and not overwrite:
            raise GraphError(f"{self.what} {name!r} is already registered")
        if self.validate is not None:
            self.validate(obj)
        self._items[name] = obj
        return obj

    def known(self) -> list[str]:
        """Names of all registered entries, in registration order."""
        return list(self._items)

    def get(self, name, where: str | None = None) -> T:
        """The entry registered as ``name``; a GraphError naming ``where`` and listing the known names otherwise."""
        obj = self._items.get(name) if isinstance(name, str) else None
        if obj is None:
            prefix = f"{where}: " if where else ""
            raise GraphError(f"{prefix}unknown {self.what} {name!r}; known: {', '.join(self._items)}")
        return obj
