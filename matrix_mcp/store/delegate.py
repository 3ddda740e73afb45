"""How a dialect's store class answers the Store protocol: each method is the same-named function of the
module of its noun, called with the store's Database first (`plan = on_db(runs.plan)`).

The function's own signature is the method's: the type checker holds it to the protocol (a dialect whose
`runs.plan` drifts from `Store.plan` no longer satisfies `Store`), and `inspect.signature` shows the
method as the protocol does (tests/architecture/test_call_shapes.py compares them). Nothing is restated in the store
class, so a method's signature is written twice only where it must be: the protocol and its functions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

P = ParamSpec("P")
R = TypeVar("R")
DB = TypeVar("DB")
DB_co = TypeVar("DB_co", covariant=True)


class HasDb(Protocol[DB_co]):
    """A dialect's store: it holds the Database its module functions take first."""

    @property
    def db(self) -> DB_co: ...


class on_db(Generic[DB, P, R]):
    """A store method that is `fn(store.db, ...)`: a non-data descriptor, so the first access on a store
    binds `fn` to its Database once and keeps that callable in the instance (later calls pay one dict
    lookup and a partial call, no wrapper frame)."""

    def __init__(self, fn: Callable[Concatenate[DB, P], R]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__
        params = list(inspect.signature(fn).parameters.values())
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        # as the class shows it: the method's (self, ...) in place of the function's (db, ...)
        self.__signature__ = inspect.signature(fn).replace(parameters=[self_param, *params[1:]])

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Self: ...

    @overload
    def __get__(self, obj: HasDb[DB], owner: type | None = None) -> Callable[P, R]: ...

    def __get__(self, obj: HasDb[DB] | None, owner: type | None = None) -> Self | Callable[P, R]:
        if obj is None:
            return self
        bound: Callable[P, R] = functools.partial(self.fn, obj.db)
        vars(obj)[self.name] = bound
        return bound

    def __call__(self, store: HasDb[DB], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Called through the class (`SQLiteStore.plan(store, ...)`), as a method would be."""
        return self.fn(store.db, *args, **kwargs)
