"""DeviceError: one-line, user-facing validation error for device descriptions."""
from __future__ import annotations

import json
from typing import Any


class DeviceError(ValueError):
    """Invalid device description. `str(err)` is one line: ``SOURCE: field 'a.b': reason``.

    Attributes: `source` (file path, bundled name, "--set", ... or None), `field` (dotted path or None),
    `reason` (what is wrong).
    """

    def __init__(self, reason: str, field: str | None = None, source: str | None = None) -> None:
        self.reason = " ".join(str(reason).split())   # force a single line
        self.field = field
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        parts = []
        if self.source:
            parts.append(str(self.source))
        if self.field:
            parts.append(f"field '{self.field}'")
        parts.append(self.reason)
        return ": ".join(parts)

    def __str__(self) -> str:
        return self._message()

    def located(self, source: str) -> "DeviceError":
        """The same error attributed to `source` (keeps an already set source)."""
        if self.source:
            return self
        return DeviceError(self.reason, self.field, source)


def show(value: Any, limit: int = 60) -> str:
    """Compact JSON-like rendering of a user value for error messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
