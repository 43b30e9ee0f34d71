"""A request not built yet: its class and the keyword arguments it would be built with.

A rerun's plan finds most items done in the manifest; what it needs of those is their key and
the verdict of the request's checks, not the request. A :class:`RequestDraft` gives both for a
fraction of building it: the key's digest from the values given, the other fields at their
defaults (:class:`~._request_keys.PartialKey`), and the checks by the class's own converters
and validators, run on the values given (a default is checked once per class). A plan builds
only what it would send.

The draft does what the class's ``__init__`` does, in its order: converters in field order,
then validators in field order; so it raises the same error for the same values. Whatever it
cannot follow exactly (a missing or unknown argument, ``extra`` set, whose validator reads the
instance, a class of another shape) it leaves to building the request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import attrs

from ._convert import REQUEST_CLASSES
from ._errors import RequestValidationError
from ._models import GenerationRequest
from ._request_keys import PartialKey, request_digest

__all__ = ["RequestDraft"]

# A value's validator reads the instance: a draft with one of these set is built.
_NEEDS_INSTANCE = frozenset({"extra"})


class _Spec:
    """What a request class's ``__init__`` does, for drafts: the fields in attrs' order with
    their converters and validators; the defaults as the instance holds them, checked once."""

    def __init__(self, cls: type[GenerationRequest]) -> None:
        if getattr(cls, "__attrs_pre_init__", None) or getattr(cls, "__attrs_post_init__", None):
            raise TypeError(f"{cls.__name__}: an __init__ drafts do not follow")
        self.cls = cls
        self.fields = attrs.fields(cls)
        self.order = {f.name: i for i, f in enumerate(self.fields)}
        self.required = frozenset(f.name for f in self.fields if f.default is attrs.NOTHING)
        self.defaults: dict[str, Any] = {}
        for f in self.fields:
            if f.alias != f.name or not f.init or isinstance(f.converter, attrs.Converter):
                raise TypeError(f"{cls.__name__}.{f.name}: not a field drafts follow")
            default = f.default
            if default is attrs.NOTHING:
                continue
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                if default.takes_self:
                    raise TypeError(f"{cls.__name__}.{f.name}: a default drafts cannot make")
                default = default.factory()
            if f.converter is not None:
                default = f.converter(default)
            if f.validator is not None:
                f.validator(None, f, default)  # a default that fails: no class to draft
            # Shared by every draft's key (a default dict too): read, never handed out.
            self.defaults[f.name] = default
        self._plans: dict[tuple[str, ...], _Plan | None] = {}

    def plan(self, names: tuple[str, ...]) -> _Plan | None:
        """How to key and check the drafts that give ``names`` (in this order); None when
        they are to be built instead."""
        try:
            return self._plans[names]
        except KeyError:
            pass
        given = set(names)
        plan = None
        if (
            self.required <= given
            and given <= self.order.keys()
            and _NEEDS_INSTANCE.isdisjoint(given)
        ):
            plan = _Plan(self, names)
        if len(self._plans) > 64:  # drafts of many shapes: keep the cache small
            self._plans.clear()
        self._plans[names] = plan
        return plan


class _Plan:
    """Keying and checking the drafts of one class that give one list of names."""

    __slots__ = ("checks", "converts", "get", "key")

    def __init__(self, spec: _Spec, names: tuple[str, ...]) -> None:
        given = [f for f in spec.fields if f.name in names]  # attrs' order, as __init__ runs
        converters: list[tuple[str, Callable[[Any], Any]]] = [
            (f.name, f.converter) for f in given if f.converter is not None
        ]
        self.converts = tuple(converters)
        self.checks = tuple((f.name, f, f.validator) for f in given if f.validator is not None)
        ordered = tuple(f.name for f in given)
        self.key = PartialKey(spec.cls, ordered, spec.defaults)
        # One value or several: itemgetter gives a value for one name, a tuple for more.
        self.get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            itemgetter(*ordered) if len(ordered) > 1 else lambda v: (v[ordered[0]],)
        )


def _specs() -> dict[type, _Spec]:
    specs = {}
    for cls in REQUEST_CLASSES.values():
        # A class drafts cannot follow is built instead, always.
        with contextlib.suppress(TypeError, ValueError, RequestValidationError):
            specs[cls] = _Spec(cls)
    return specs


_SPECS = _specs()


class RequestDraft:
    """``cls(**values)``, not built: :meth:`digest` is ``request_digest`` of that request,
    :meth:`check` raises what building it would raise, :meth:`build` builds it. ``values``
    are taken as they are (not copied): do not change them afterwards.

    ``origin`` is for a subclass's :meth:`_failure`, which makes the exception raised of what
    building would raise (a prompts file names the row's line)."""

    __slots__ = ("_held", "cls", "origin", "values")

    def __init__(
        self, cls: type[GenerationRequest], values: Mapping[str, Any], origin: Any = None
    ) -> None:
        self.cls = cls
        self.values = values
        self.origin = origin
        self._held: Mapping[str, Any] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.cls.__name__} {sorted(self.values)}>"

    def _failure(self, exc: Exception) -> Exception:
        return exc

    def _plan(self) -> _Plan | None:
        spec = _SPECS.get(self.cls)
        return None if spec is None else spec.plan(tuple(self.values))

    def _converted(self, plan: _Plan) -> Mapping[str, Any]:
        held = self._held
        if held is None:
            held = self.values
            if plan.converts:
                held = dict(held)
                try:
                    for name, converter in plan.converts:
                        held[name] = converter(held[name])
                except (RequestValidationError, TypeError) as exc:
                    raise self._failure(exc) from None
            self._held = held
        return held

    def digest(self) -> bytes:
        """The digest of the request's key (:func:`~._request_keys.request_digest`); raises
        what a converter raises, as building would first."""
        plan = self._plan()
        if plan is None:
            return request_digest(self.build())
        return plan.key.digest(plan.get(self._converted(plan)))

    def check(self) -> None:
        """Raise what building the request would raise (RequestValidationError, TypeError),
        without building it."""
        plan = self._plan()
        if plan is None:
            self.build()
            return
        held = self._converted(plan)
        if attrs.validators.get_disabled():
            return
        try:
            for name, attribute, validator in plan.checks:
                validator(None, attribute, held[name])
        except (RequestValidationError, TypeError) as exc:
            raise self._failure(exc) from None

    def build(self) -> GenerationRequest:
        """The request."""
        try:
            return self.cls(**self.values)
        except (RequestValidationError, TypeError) as exc:
            raise self._failure(exc) from None
