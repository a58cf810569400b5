"""`with obj:` for objects that own a resource and release it in close()."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self


class Closing(ABC):
    """Mixin: `__enter__` returns the object itself and `__exit__` calls `close()`."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds; must be safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
