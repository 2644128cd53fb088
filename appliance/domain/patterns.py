"""The appliance's validation patterns, each defined once. Use them with `fullmatch` only.

`re.match` with `$` would accept a trailing newline ("0x…\\n"); every pattern here is written without anchors so
that `fullmatch` is the only way to apply it. All are ASCII: `[0-9]` never matches other scripts' digits.
Importing this module is cheap (the CLI's `--help` imports it).
"""

from __future__ import annotations

import re

DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
"""A canonical non-negative decimal integer: no sign, no leading zeros, no separators."""

HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
"""32 bytes in lowercase hex, as the appliance writes hashes (policy bundles, attestations, evidence, heads)."""

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}", re.ASCII)
"""An Ethereum address in any case (EIP-55 checksums are checked by domain.eip712)."""

CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)
"""An ISO 4217 alphabetic code."""

B64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
"""Unpadded base64url (RFC 7515), possibly empty."""

COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+", re.ASCII)
"""A compact JWS: header, payload (may be empty), signature."""

NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}", re.ASCII)
"""An operator's name."""

NONCE = re.compile(r"0x[0-9a-f]{64}", re.ASCII)
"""An EIP-712 mint nonce as the appliance writes it."""
