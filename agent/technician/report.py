"""A technician command's answer: items that passed or failed, each with a reason in words,
printed plain (one line each) or as JSON (`--json`), and an exit code a script can act on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TextIO

# Exit codes shared by the technician commands (README, "For technicians").
EXIT_OK = 0
EXIT_FAILED = 1  # a check failed, or the command was refused: nothing was changed
EXIT_USAGE = 2  # bad arguments or an unreadable config
EXIT_AGENT_RUNNING = 3  # refused because the agent runs (reset, bind)
EXIT_PARTIAL = 4  # done, but a step could not be completed (the report says which)


@dataclass
class Item:
    name: str
    ok: bool
    detail: str
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class Report:
    command: str
    items: list[Item] = field(default_factory=list)
    summary: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str, **data: object) -> Item:
        item = Item(name, ok, detail, dict(data))
        self.items.append(item)
        return item

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.items)

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "ok": self.ok,
            "summary": self.summary,
            "items": [
                {
                    "name": i.name,
                    "ok": i.ok,
                    "detail": i.detail,
                    **({"data": i.data} if i.data else {}),
                }
                for i in self.items
            ],
            **self.extra,
        }

    def print(self, out: TextIO, *, as_json: bool) -> None:
        if as_json:
            out.write(json.dumps(self.to_json(), indent=2, default=str) + "\n")
            return
        width = max((len(i.name) for i in self.items), default=0)
        for item in self.items:
            out.write(f"{'PASS' if item.ok else 'FAIL'}  {item.name:<{width}}  {item.detail}\n")
        if self.summary:
            out.write(self.summary + "\n")
