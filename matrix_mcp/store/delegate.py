"""How a dialect's store class answers the Store protocol: each method is the same-named function of the
module of its noun, called with the store's Database first (`plan` is `on_db(runs.plan)`).

What both dialects' store classes share is here too: `DialectStore` holds the Database and its lifecycle.
The list of methods is the protocol's, stated once: `@delegated(runs, work, ...)` binds every Store method
the class does not define to the one function of that name defined in those modules, and fails at
import when a method has no function or two. The function's own signature is the method's:
`inspect.signature` shows the method as the protocol does, and tests/architecture/test_call_shapes.py
holds names, kinds, defaults and annotations equal to the protocol's. Nothing is restated in the store
class, so a method's signature is written twice only where it must be: the protocol and its functions.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

from matrix_mcp.models import Outcome
from matrix_mcp.store.group_commit import GroupCommit
from matrix_mcp.store.params import OutcomeFilter
from matrix_mcp.store.protocol import Store

P = ParamSpec("P")
R = TypeVar("R")
DB = TypeVar("DB")
DB_co = TypeVar("DB_co", covariant=True)
C = TypeVar("C", bound=type)


class Database(Protocol):
    """What a dialect's Database offers its store class besides the noun modules' needs."""

    @property
    def url_for_display(self) -> str: ...

    @property
    def group_commit(self) -> GroupCommit[Any]: ...

    async def close(self) -> None: ...


D = TypeVar("D", bound=Database)


class DialectStore(Store, Generic[D]):
    """A dialect's store class: its Database and its lifecycle, and the Store methods that are the same
    in both dialects over the others (iter_outcomes); `@delegated` adds the rest."""

    def __init__(self, db: D) -> None:
        self.db = db
        self.url_for_display = db.url_for_display

    async def close(self) -> None:
        await self.db.close()

    @property
    def group_commit(self) -> GroupCommit[Any]:
        return self.db.group_commit

    async def iter_outcomes(self, run_id: str) -> AsyncIterator[Outcome]:
        """Every outcome of a run, page by page through the dialect's list_outcomes."""
        cursor: str | None = None
        while True:
            page = await self.list_outcomes(OutcomeFilter(run_id=run_id), limit=1000, cursor=cursor)
            for outcome in page.outcomes:
                yield outcome
            if page.next_cursor is None:
                return
            cursor = page.next_cursor


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


def protocol_methods(protocol: type) -> list[str]:
    """The public methods `protocol` declares in its own body (properties excluded), in its order."""
    return [name for name, value in vars(protocol).items() if inspect.isfunction(value) and name[0] != "_"]


def delegated(*modules: ModuleType, protocol: type = Store) -> Callable[[C], C]:
    """Class decorator for a dialect's store (a DialectStore, so a subclass of `protocol`): each method of
    `protocol` that neither the class nor a base below the protocol defines becomes `on_db` of the one
    function of that name defined in `modules` (the dialect's noun modules)."""

    def bind(cls: C) -> C:
        own = cls.__mro__[: cls.__mro__.index(protocol)]  # the class and its bases below the protocol
        for name in protocol_methods(protocol):
            if any(name in vars(base) for base in own):
                continue
            homes: list[Any] = [
                fn
                for module in modules
                if (fn := vars(module).get(name)) is not None
                and getattr(fn, "__module__", None) == module.__name__
            ]
            if len(homes) != 1:
                where = ", ".join(module.__name__ for module in modules)
                raise TypeError(f"{cls.__name__}.{name}: {len(homes)} functions of that name in {where}")
            method: on_db[Any, Any, Any] = on_db(homes[0])
            method.__set_name__(cls, name)
            setattr(cls, name, method)
        return cls

    return bind
