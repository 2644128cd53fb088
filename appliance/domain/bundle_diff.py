"""What a policy proposal changes, as lines a security admin reads before approving it (pure).

Bundles are compared as their JSON tables. Operators are matched by name and allowlist entries by chain and
address (so reordering is no change and a replaced key shows as the one member that changed); other lists by
position. Each line is `~ path: old -> new`, `+ path: new` or `- path: old`, values as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from appliance.errors import ApplianceError


def _key(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        if "name" in item and isinstance(item["name"], str):
            return item["name"]
        if "address" in item:
            return f"{item.get('chain_id', '')}:{item['address']}"
        if "public_key" in item and isinstance(item.get("id"), str):  # a security key: by its credential id
            return str(item["id"])
    return str(index)


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for k in value:
            _flatten(value[k], f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and value:
        keyed = [(_key(item, i), item) for i, item in enumerate(value)]
        if len({k for k, _ in keyed}) != len(keyed):  # duplicate keys: fall back to positions
            keyed = [(str(i), item) for i, item in enumerate(value)]
        for k, item in keyed:
            _flatten(item, f"{path}[{k}]", out)
    else:
        out[path] = value


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The changes from `old` to `new` (two bundles' JSON, or any two JSON objects), one line each, by path."""
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    _flatten(old, "", before)
    _flatten(new, "", after)
    lines = []
    for path in sorted(before.keys() | after.keys()):
        if path not in after:
            lines.append(f"- {path}: {_show(before[path])}")
        elif path not in before:
            lines.append(f"+ {path}: {_show(after[path])}")
        elif before[path] != after[path] or type(before[path]) is not type(after[path]):
            lines.append(f"~ {path}: {_show(before[path])} -> {_show(after[path])}")
    return lines


def _keys_by_operator(bundle: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    operators = bundle.get("operators", {}).get("operators", []) if isinstance(bundle, Mapping) else []
    return {(str(op.get("name")), str(c.get("id"))): c for op in operators if isinstance(op, Mapping)
            for c in op.get("webauthn", []) if isinstance(c, Mapping)}


def _key_text(credential: Mapping[str, Any]) -> str:
    from appliance.domain.webauthn import Credential, fingerprint  # noqa: PLC0415 - a light import

    try:
        shown = fingerprint(Credential(str(credential["id"]), str(credential["public_key"])))
    except (KeyError, ValueError, ApplianceError):
        shown = "unreadable key"
    return f"\"{credential.get('label') or 'security key'}\" (fingerprint {shown})"


def readable(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """diff() as a security admin reads it: each security key enrolled or removed as one sentence with its
    fingerprint (to compare with its owner), then every other change as a diff() line."""
    before, after = _keys_by_operator(old), _keys_by_operator(new)
    lines = [f"+ {name} enrols security key {_key_text(after[name, cid])}"
             for name, cid in sorted(after.keys() - before.keys())]
    lines += [f"- {name} loses security key {_key_text(before[name, cid])}"
              for name, cid in sorted(before.keys() - after.keys())]
    return lines + [line for line in diff(old, new) if _not_about_whole_keys(line)]


def _not_about_whole_keys(line: str) -> bool:
    """Whether a diff() line says more than the sentences above: anything but a security key (or an empty list
    of them) appearing or disappearing; a changed member of a kept key (its label, say) stays."""
    path = line.split(":", 1)[0]
    return ".webauthn" not in path or (line.startswith("~") and ".webauthn[" in path)
