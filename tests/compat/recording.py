"""The calls a trainer makes on ``HoistDestination``, recorded as data.

The real Composer's calls (tests/compat/test_composer.py, in its own venv) are
kept in tests/compat/composer_calls.json; tests/test_composer.py drives its
stand-in through the same recorder and compares. Composer need not be
installed to import this module.
"""

from __future__ import annotations

import re
from typing import Any

from hoist.integrations.composer import HoistDestination


def shape(run_name: str, method: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """One call on a destination as data: the method, its keyword names and, for
    files, the remote name with the run's name and the numbers in it abstracted."""
    call: dict[str, Any] = {"method": method, "keywords": sorted(kwargs)}
    name = kwargs.get("remote_file_name")
    if isinstance(name, str):
        call["name"] = re.sub(r"\d+", "N", name.replace(run_name, "{run_name}"))
    if "overwrite" in kwargs and method == "upload_file":
        call["overwrite"] = kwargs["overwrite"]
    return call


class Recorded(HoistDestination):
    """``HoistDestination``, noting each call Composer makes on it (hooks by event)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[dict[str, Any]] = []
        self.run_name = "?"

    def _note(self, method: str, kwargs: dict[str, Any]) -> None:
        call = shape(self.run_name, method, kwargs)
        if "name" not in call and self.calls and self.calls[-1] == call:
            return  # one batch_end stands for a run of them
        self.calls.append(call)

    def run_event(self, event: Any, state: Any, logger: Any) -> None:
        self.run_name = state.run_name
        hook = str(getattr(event, "value", event))
        if hook in vars(HoistDestination):  # the events hoist acts on, not every Callback hook
            self._note(hook, {})
        super().run_event(event, state, logger)

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        assert not args, f"Composer passed upload_file positional arguments: {args!r}"
        self._note("upload_file", kwargs)
        super().upload_file(**kwargs)

    def download_file(self, *args: Any, **kwargs: Any) -> None:
        names = ["remote_file_name", "destination", "overwrite", "progress_bar"]
        given = dict(zip(names, args, strict=False)) | kwargs
        self._note("download_file", given)
        try:
            super().download_file(**given)
        except FileNotFoundError:
            self._note("download_file:FileNotFoundError", {})
            raise

    def close(self, state: Any, logger: Any) -> None:
        self._note("close", {})
        super().close(state, logger)

    def post_close(self) -> None:
        self._note("post_close", {})
        super().post_close()
