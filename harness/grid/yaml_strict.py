"""YAML loading that refuses duplicate mapping keys.

PyYAML keeps the last of two equal keys without a word; in a grid spec that silently drops a
labelled cell (two `flan:` entries under one axis), so duplicates are an error naming the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader whose mappings raise on a repeated key."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in mapping:
            mark = key_node.start_mark
            raise ConfigError(
                f"{mark.name}:{mark.line + 1}: duplicate key {key!r} (each label and key may appear once)"
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file, raising ConfigError (with file and line) on syntax errors or duplicate keys."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return loads_yaml(text, name=str(path))


def loads_yaml(text: str, name: str = "<string>") -> Any:
    """Parse YAML text strictly; ``name`` is used in error messages."""
    loader = _StrictLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
