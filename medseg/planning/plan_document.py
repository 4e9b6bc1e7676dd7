"""A planned config and why each value was chosen (:class:`Plan`), written as commented YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["Plan"]


@dataclass
class Plan:
    """A planned config (a nested dict the schema accepts) and, per dotted key, why that value was chosen."""

    config: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The main choices, one line each (what ``medseg plan`` prints)."""
        data, train = self.config["data"], self.config["train"]
        size = data.get("patch_size", data.get("image_size"))
        keys = [("spacing_mm", data.get("spacing_mm")), ("patch/image size", size),
                ("network", f"unet {self.config['model']['channels']}"), ("batch", train["batch_size"])]
        lines = [f"{k}: {v}" for k, v in keys if v is not None]
        if "channels" in data:
            lines.append("channels: " + ", ".join(f"{c['name']} ({c['intensity']})" for c in data["channels"]))
        elif "windows" in data:
            lines.append(f"intensity: window {data['windows'][0]}")
        elif "intensity" in data:
            lines.append(f"intensity: {data['intensity']}")
        return "\n".join(lines)

    def yaml_text(self) -> str:
        """The config as YAML, each chosen value followed by a comment saying why."""
        lines = [f"# {h}" if h else "#" for h in self.header]
        _render(self.config, self.reasons, [], 0, lines)
        return "\n".join(lines) + "\n"


def _render(node: dict[str, Any], reasons: dict[str, str], path: list[str], indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    for key, value in node.items():
        dotted = ".".join([*path, key])
        note = reasons.get(dotted)
        if isinstance(value, dict) and key != "classes_map":
            lines.append(f"{pad}{key}:" + (f"  # {note}" if note else ""))
            _render(value, reasons, [*path, key], indent + 1, lines)
            continue
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key}:" + (f"  # {note}" if note else ""))
            for item in value:
                lines.append(f"{pad}  - {_flow(item)}")
            continue
        lines.append(f"{pad}{key}: {_flow(value)}" + (f"  # {note}" if note else ""))


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()
