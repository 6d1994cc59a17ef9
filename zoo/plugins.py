"""One registry shape for everything a package can plug in: mixers, tasks, evaluators, bench peers.

A registry holds named objects of one kind. Built-ins register when `builtins` (a module) is
imported; installed packages register through the entry-point group `group` (each entry point
names a module or object whose import registers). A plugin that fails to import is recorded,
not raised, so one broken package never breaks the zoo; asking for its name says why it is
missing.

    TASKS = PluginRegistry("zoo.tasks", kind="task", builtins="zoo.tasks.builtin", listing="zoo tasks")
    TASKS.add("copy", CopyTask)      # from a @register_task decorator
    TASKS.get("copy")                # -> CopyTask, or a one-line ZooError with a "did you mean"
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.metadata
import threading
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from zoo.errors import ZooError

BUILTIN_SOURCE = "mixer-zoo"
T = TypeVar("T")


class PluginRegistry(Generic[T]):
    unknown_error: type[ZooError] = ZooError  # raised for a name nobody registered
    clash_error: type[ZooError] = ZooError    # raised when two packages register one name

    def __init__(self, group: str, kind: str, builtins: str, listing: str) -> None:
        self.group = group        # entry-point group, e.g. "zoo.tasks"
        self.kind = kind          # what one entry is called in messages, e.g. "task"
        self.builtins = builtins  # module whose import registers the built-ins
        self.listing = listing    # the command that lists them, e.g. "zoo tasks"
        self.items: dict[str, T] = {}
        self.sources: dict[str, str] = {}          # name -> package that registered it
        self.broken: list[dict[str, str]] = []     # {name, package, error}
        self._source = BUILTIN_SOURCE
        self._discovered = False
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def _loading_from(self, source: str) -> Iterator[None]:
        prev, self._source = self._source, source
        try:
            yield
        finally:
            self._source = prev

    def add(self, name: str, obj: T) -> None:
        old = self.items.get(name)
        if old is not None and not self.same(old, obj):
            raise self.clash_error(f"{self.kind} name '{name}' registered twice: by {self.sources[name]} "
                                   f"({_where(old)}) and by {self._source} ({_where(obj)})", "rename one of them")
        self.items[name] = obj
        self.sources[name] = self._source

    def same(self, old: T, new: T) -> bool:
        """Whether registering `new` under a taken name is the same object coming again."""
        return old is new

    def check_loaded(self, ep: importlib.metadata.EntryPoint, obj: Any) -> None:
        """Called with what an entry point loaded; raise to record the plugin as broken."""

    def ensure_loaded(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            importlib.import_module(self.builtins)
            for ep in importlib.metadata.entry_points(group=self.group):
                self._load(ep)

    def _load(self, ep: importlib.metadata.EntryPoint) -> None:
        package = ep.dist.name if ep.dist is not None else "?"
        before = (dict(self.items), dict(self.sources))
        try:
            with self._loading_from(package):
                self.check_loaded(ep, ep.load())
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # a broken plugin must never break the zoo, sys.exit() at import included
            self.items, self.sources = before
            self.broken.append({"name": ep.name, "package": package, "error": f"{type(e).__name__}: {e}"})

    def names(self) -> list[str]:
        self.ensure_loaded()
        return sorted(self.items)

    def all(self) -> dict[str, T]:
        self.ensure_loaded()
        return {n: self.items[n] for n in sorted(self.items)}

    def source(self, name: str) -> str:
        self.ensure_loaded()
        return self.sources[name]

    def broken_plugins(self) -> list[dict[str, str]]:
        self.ensure_loaded()
        return list(self.broken)

    def why_missing(self, name: str) -> ZooError:
        """The error for an unknown name: the broken plugin that should have provided it, else the
        nearest names."""
        broken = next((b for b in self.broken if b["name"] == name), None)
        if broken is not None:
            return self.unknown_error(
                f"{self.kind} '{name}' from {broken['package']} failed to import: {broken['error']}",
                f"fix or reinstall that package; `{self.listing}` lists the broken plugins")
        close = difflib.get_close_matches(name, list(self.items), n=3, cutoff=0.5)
        hint = (f"did you mean {', '.join(repr(c) for c in close)}? " if close else "") + \
            f"allowed: {', '.join(sorted(self.items))}"
        return self.unknown_error(f"unknown {self.kind} '{name}'", hint)

    def get(self, name: str) -> T:
        self.ensure_loaded()
        if name not in self.items:
            raise self.why_missing(name)
        return self.items[name]

    def reset(self) -> None:
        """Forget discovered plugins (tests install plugins at run time)."""
        with self._lock:
            keep = [n for n in self.items if self.sources.get(n) == BUILTIN_SOURCE]
            self.items = {n: self.items[n] for n in keep}
            self.sources = {n: BUILTIN_SOURCE for n in keep}
            self.broken = []
            self._discovered = False


def _where(obj: Any) -> str:
    obj = getattr(obj, "cls", obj)  # a spec object names the class it registers
    return getattr(obj, "__module__", None) or type(obj).__module__


# Every kind a package can plug in: kind -> "module:attribute" of its registry, imported on
# first use so listing the kinds loads nothing. A new kind is one line here.
REGISTRIES: dict[str, str] = {
    "mixer": "zoo.registry:MIXERS",
    "task": "zoo.tasks.base:TASKS",
    "evaluator": "zoo.eval.base:EVALUATORS",
    "peer": "zoo.bench.peers:PEERS",
}


def registry(kind: str) -> PluginRegistry[Any]:
    """The registry of one plugin kind, e.g. `registry("task").names()`."""
    if kind not in REGISTRIES:
        raise ZooError(f"unknown plugin kind '{kind}'", f"allowed: {', '.join(REGISTRIES)}")
    module, attr = REGISTRIES[kind].split(":")
    return getattr(importlib.import_module(module), attr)
