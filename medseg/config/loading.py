"""Load, override, validate and save experiment configs (YAML, ``yaml.safe_load`` only)."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medseg.atomic import write_text_atomic
from medseg.config.networks import NETWORK_CONFIGS
from medseg.config.schema import ExperimentConfig
from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1_000_000
MAX_ALIASES = 100
MAX_NESTING = 50
MAX_NODES = 100_000
# Keys whose values are paths; relative ones resolve against the YAML file's folder.
PATH_KEYS = (("data", "root"), ("data", "pair_list"), ("data", "train_list"), ("data", "val_list"),
             ("data", "cache_dir"), ("model", "pretrained"))
#: A validator message that starts with the key it refuses, e.g. "data.image_size: ...".
_NAMED_KEY = re.compile(r"^([a-z_]+(?:\.[a-z_]+)*): ")
#: The "line" of a key given with --set (it has none in the file).
FROM_SET = 0
#: Values of path keys that name something other than a file.
NOT_PATHS = ("imagenet",)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML config, apply ``key.path=value`` overrides and validate it.

    Args:
        path: YAML file.
        overrides: Items such as ``"train.max_epochs=2"``; the value is parsed as YAML.
            Relative paths given here resolve against the current directory.

    Returns:
        The validated, immutable config with absolute paths.

    Raises:
        ConfigError: Unreadable file, bad YAML, unknown key or invalid value; the message names
            every offending dotted key with the value found and what is allowed.
    """
    path = Path(path)
    raw = _read_yaml(path)
    lines = _key_lines(path)
    _resolve_paths(raw, base=path.resolve().parent)
    override_raw: dict[str, Any] = {}
    for item in overrides:
        key, value = _parse_override(item)
        if key == "model.name":
            _switch_network(raw, value, source=str(path))
        _set_dotted(raw, key, value)
        _set_dotted(override_raw, key, value)
    _resolve_paths(override_raw, base=Path.cwd())
    for keys in PATH_KEYS:
        value = _get_dotted(override_raw, keys)
        if value is not None:
            _set_dotted(raw, ".".join(keys), value)
    for item in overrides:  # a value from --set has no line in the file: errors about it say "from --set"
        key = _parse_override(item)[0]
        lines = {k: v for k, v in lines.items() if k != key and not k.startswith(key + ".")} | {key: FROM_SET}
    return validate_config(raw, source=str(path), lines=lines)


def validate_config(
    raw: Mapping[str, Any], *, source: str = "config", lines: Mapping[str, int] | None = None
) -> ExperimentConfig:
    """Validate a plain dict (e.g. from a checkpoint) into an :class:`ExperimentConfig`.

    Raises:
        ConfigError: Listing each invalid setting as ``key.path: message (found: value)``.

    Example:
        >>> cfg = validate_config({"data": {"kind": "volumes3d", "root": "ct"}, "model": {"spatial_dims": 3}})
        >>> cfg.model.spatial_dims, cfg.data.windows, cfg.train.max_epochs
        (3, ['soft_tissue'], 50)
        >>> validate_config({"data": {"root": "ct"}, "train": {"max_epoch": 2}})
        Traceback (most recent call last):
        medseg.errors.ConfigError: config: 1 invalid setting(s): train.max_epoch: unknown key (found: 2)
    """
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        errors = _readable_errors(err.errors(), _derived_keys(raw))
        problems = list(dict.fromkeys(_describe(e, lines or {}) for e in errors))
        detail = "; ".join(problems)
        raise ConfigError(f"{source}: {len(problems)} invalid setting(s): {detail}") from None


def upgrade_stored_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored in a checkpoint by an older medseg, in today's schema.

    Before 2D images kept their bit depth, every stored images2d config said ``intensity: ct_window`` and
    ``windows: [soft_tissue]`` (the defaults of the time), which 2D images never used: they were scaled by 1/255.
    Such a config (images2d, no ``data.intensity_offset`` key, which every config stored since has) becomes
    ``intensity: scale`` without windows; a zscore volume config loses its unused windows likewise. Meant for
    stored configs only, which hold every key.

    Example:
        >>> old = {"data": {"kind": "images2d", "root": "x", "intensity": "ct_window", "windows": ["soft_tissue"]}}
        >>> upgrade_stored_config(old)["data"]["intensity"], "windows" in upgrade_stored_config(old)["data"]
        ('scale', False)
    """
    out = dict(raw)
    data = out.get("data")
    if not isinstance(data, Mapping) or "intensity_offset" in data:
        return out
    if data.get("kind", "images2d") == "images2d" and data.get("intensity") == "ct_window":
        out["data"] = {k: v for k, v in data.items() if k != "windows"} | {"intensity": "scale"}
    elif data.get("intensity") == "zscore":
        out["data"] = {k: v for k, v in data.items() if k != "windows"}
    return out


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """JSON-safe dict of a config, every default filled in."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text."""
    text: str = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    return text


def save_config(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text_atomic(path, dump_config(cfg))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
    except OSError as err:
        raise ConfigError(f"{path}: config file not found ({err.strerror or type(err).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path}: config is not a regular file (a folder, FIFO or device); give a YAML file")
    size = info.st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is {size} bytes; at most {MAX_CONFIG_BYTES} are allowed")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    depth = _nesting_depth(text)
    if depth > MAX_NESTING:
        raise ConfigError(f"{path}: YAML nested {depth} levels deep; at most {MAX_NESTING} are allowed")
    aliases = _count_aliases(text, path)
    if aliases > MAX_ALIASES:
        raise ConfigError(f"{path}: {aliases} YAML aliases; at most {MAX_ALIASES} are allowed (alias bomb?)")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        nodes = _expanded_nodes(root)
        _refuse_duplicate_keys(root, str(path))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    except _RecursiveYaml:
        raise ConfigError(f"{path}: a YAML alias refers to a node that contains it (recursive structure); "
                          "write the values out") from None
    if nodes > MAX_NODES:
        raise ConfigError(f"{path}: YAML expands to {nodes} values through its aliases; at most {MAX_NODES} "
                          "are allowed (alias bomb?)")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


class _RecursiveYaml(Exception):
    pass


def _refuse_duplicate_keys(root: Any, where: str) -> None:
    """YAML keeps the last of two equal keys silently (``{255: polyp, 255: lesion}`` drops a class): refuse them."""
    stack, seen_nodes = [root], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    name = yaml.safe_load(key.value) if key.tag.endswith((":int", ":float", ":bool")) else key.value
                    if name in keys:
                        raise ConfigError(f"{where}: key {key.value!r} appears twice in one mapping (lines "
                                          f"{keys[name]} and {key.start_mark.line + 1}); YAML would keep only the "
                                          "last one")
                    keys[name] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _expanded_nodes(root: Any) -> int:
    """Number of values the document has once aliases are expanded (shared nodes counted each time used),
    computed without expanding and without recursion; raises _RecursiveYaml on a cycle."""
    if root is None:
        return 0
    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            active.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), 10 * MAX_NODES)
            continue
        if key in sizes:
            continue
        if key in active:
            raise _RecursiveYaml()
        active.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in active:
                raise _RecursiveYaml()
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _nesting_depth(text: str) -> int:
    """Deepest collection nesting, counted from parser events (no recursion, so no RecursionError)."""
    depth = deepest = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                deepest = max(deepest, depth)
                if deepest > MAX_NESTING:
                    break
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return deepest  # reported with its position by the full parse
    return deepest


def _count_aliases(text: str, path: Path) -> int:
    try:
        return sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None


def _key_lines(path: Path) -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML file (best effort)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    out: dict[str, int] = {}

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = f"{prefix}{key_node.value}"
                out[key] = key_node.start_mark.line + 1
                walk(value_node, key + ".")

    walk(node, "")
    return out


def _derived_keys(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """Keys the config fills from others, not given by the user: ``data.intensity`` and ``data.windows`` repeat
    the first of ``data.channels`` (their errors are the channel's, reported there)."""
    data = raw.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("channels"), list):
        return ()
    return tuple(f"data.{k}" for k in ("intensity", "windows") if data.get(k) is None)


#: Union branches pydantic names in an error's location (``windows.0.str``): not keys.
_BRANCHES = {"str": str, "WindowConfig": dict}
#: What a mapping-valued entry looks like, for "expected a mapping" messages.
_MAPPING_EXAMPLES = {"ChannelConfig": "{name: CT}", "WindowConfig": "{center_hu: 40, width_hu: 400}"}


def _readable_errors(errors: Sequence[Any], derived: Sequence[str]) -> list[dict[str, Any]]:
    """Pydantic's errors without those about derived keys and with union branches folded: an entry that may be
    a preset name or a mapping is reported once, by the branch its value took (or as neither)."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [p for p in error["loc"] if not str(p).startswith(("function-after", "function-before"))]
        if ".".join(map(str, loc)).startswith(tuple(derived)) and derived:
            continue
        branch = next((i for i, p in enumerate(loc) if p in _BRANCHES), None)
        if branch is None:
            out.append({**error, "loc": tuple(loc)})
            continue
        entry = error["input"] if branch == len(loc) - 1 else None
        taken = _BRANCHES[str(loc[branch])]
        if branch == len(loc) - 1 and not isinstance(entry, taken):
            if isinstance(entry, str | dict):
                continue  # the other branch, which the value took, says what is wrong
            out.append({**error, "loc": tuple(loc[:branch]), "type": "value_error",
                        "msg": "expected a window preset name or a mapping like {center_hu: 40, width_hu: 400}"})
            continue
        out.append({**error, "loc": tuple(loc[:branch] + loc[branch + 1:])})
    return out


def _describe(error: Mapping[str, Any], lines: Mapping[str, int]) -> str:
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-after", "function-before"))]
    network = ""
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in NETWORK_CONFIGS:  # the union's tag, not a key
        network = loc.pop(1)
    msg = str(error["msg"]).removeprefix("Value error, ")
    named = _NAMED_KEY.match(msg)
    if named and error["type"] == "value_error":  # a validator that names the key it refuses
        loc, msg = [*loc, *named.group(1).split(".")], msg[named.end():]
    key = ".".join(loc) or "(top level)"
    where = ""
    for n in range(len(loc), 0, -1):
        line = lines.get(".".join(loc[:n]))
        if line is not None:
            where = " (from --set)" if line == FROM_SET else f" (line {line})"
            break
    if error["type"] == "model_type":
        example = _MAPPING_EXAMPLES.get(str(error.get("ctx", {}).get("class_name")))
        msg = f"expected a mapping like {example}" if example else "expected a mapping of keys"
    elif error["type"] == "path_type":
        msg = "expected a path (text)"
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
        if network:
            keys = sorted(NETWORK_CONFIGS[network].model_fields)
            msg = f"unknown key for model.name {network!r} (its keys: {', '.join(keys)})"
    if error["type"] == "union_tag_invalid":
        line = lines.get("model.name")
        where = f" (line {line})" if line else where
        tag = error.get("ctx", {}).get("tag")
        return f"model.name{where}: unknown network; choose from {sorted(NETWORK_CONFIGS)} (found: {tag!r})"
    found = error.get("input")
    shown = "" if error["type"] in ("missing",) or isinstance(found, dict) else f" (found: {found!r})"
    return f"{key}{where}: {msg}{shown}"


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. train.max_epochs=2")
    if _nesting_depth(text) > MAX_NESTING:
        raise ConfigError(f"--set {key}: value nested more than {MAX_NESTING} levels deep")
    try:
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), f"--set {key}")
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key, value


def _get_dotted(raw: Mapping[str, Any], keys: Sequence[str]) -> Any:
    node: Any = raw
    for k in keys:
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], *, base: Path) -> None:
    for keys in PATH_KEYS:
        section = raw.get(keys[0])
        if isinstance(section, dict) and isinstance(section.get(keys[1]), str | os.PathLike) \
                and section[keys[1]] not in NOT_PATHS:
            value = Path(os.path.expanduser(str(section[keys[1]])))
            section[keys[1]] = str(value if value.is_absolute() else (base / value).resolve())


def _switch_network(raw: dict[str, Any], name: Any, *, source: str) -> None:
    """``--set model.name=X`` to another network: the file's keys that X does not take are dropped (and named in a
    warning), so a config written for one network can be tried with another from the command line; keys set on
    the command line after it are still checked."""
    from medseg.config.networks import NETWORK_CONFIGS

    model = raw.get("model")
    if not isinstance(model, dict) or not isinstance(name, str) or name not in NETWORK_CONFIGS:
        return  # an unknown name is reported by validation
    if model.get("name", "unet") == name:
        return
    allowed = set(NETWORK_CONFIGS[name].model_fields)
    dropped = sorted(k for k in model if k not in allowed)
    for key in dropped:
        del model[key]
    if dropped:
        logger.warning("%s: --set model.name=%s: left out the file's model keys %s, which %s does not take",
                       source, name, ", ".join(dropped), name)
