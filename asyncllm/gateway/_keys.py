"""API keys: bearer tokens that name a tenant, kept only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError

__all__ = ["ApiKey", "ApiKeys", "hash_key"]

#: Environment variable holding the key list as JSON text.
KEYS_VARIABLE = "ASYNCLLM_GATEWAY_KEYS"
#: Environment variable naming a JSON file with the key list.
KEYS_FILE_VARIABLE = "ASYNCLLM_GATEWAY_KEYS_FILE"

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """Return the SHA-256 hex digest of an API key, as the key file stores it.

    The same as ``printf %s "$KEY" | sha256sum`` in a shell.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One accepted key.

    Attributes:
        tenant: The tenant the key acts for.
        sha256: The SHA-256 hex digest of the key.
        name: A label for logs (never the key itself), if given.
    """

    tenant: str
    sha256: str
    name: str | None = None


class ApiKeys:
    """The keys a gateway accepts, each mapped to its tenant.

    Only digests are held, so a leaked key file or memory dump does not leak
    the keys. A presented key is hashed and compared with every digest in
    constant time.

    The JSON form (file or ``ASYNCLLM_GATEWAY_KEYS``)::

        {"keys": [{"tenant": "acme", "sha256": "<64 hex digits>",
                   "name": "acme-prod"}]}

    Args:
        keys: The accepted keys.

    Raises:
        ConfigurationError: A digest is malformed or names two tenants.
    """

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys = tuple(keys)
        _check_keys(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<ApiKeys {len(self._keys)} keys>"

    @classmethod
    def from_json(cls, text: str, source: str = KEYS_VARIABLE) -> ApiKeys:
        """Read keys from JSON text in the documented form.

        Args:
            text: The JSON text.
            source: Where it came from, for error messages.

        Raises:
            ConfigurationError: The text is not a key list.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{source} is not JSON: {exc}") from None
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            message = f'{source} must be {{"keys": [{{"tenant": ..., "sha256": ...}}]}}'
            raise ConfigurationError(message)
        return cls(_entry(item, index, source) for index, item in enumerate(entries))

    @classmethod
    def from_file(cls, path: str | Path) -> ApiKeys:
        """Read keys from a JSON file in the documented form."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            message = f"cannot read the API key file {str(path)!r}: {exc}"
            raise ConfigurationError(message) from exc
        return cls.from_json(text, repr(str(path)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiKeys:
        """Read keys from ``ASYNCLLM_GATEWAY_KEYS_FILE`` or ``ASYNCLLM_GATEWAY_KEYS``.

        Raises:
            ConfigurationError: Neither is set, or the keys are not usable.
        """
        env = os.environ if env is None else env
        if env.get(KEYS_FILE_VARIABLE):
            return cls.from_file(env[KEYS_FILE_VARIABLE])
        if env.get(KEYS_VARIABLE):
            return cls.from_json(env[KEYS_VARIABLE])
        message = (
            f"the gateway needs API keys: pass --keys FILE, or set "
            f"{KEYS_FILE_VARIABLE} or {KEYS_VARIABLE}"
        )
        raise ConfigurationError(message)

    def find(self, key: str) -> ApiKey | None:
        """Return the entry of a presented key, or None when it is not accepted.

        Every digest is compared, in constant time, whatever matches.
        """
        digest = hash_key(key).encode("ascii")
        found = None
        for entry in self._keys:
            if hmac.compare_digest(digest, entry.sha256.encode("ascii")):
                found = entry
        return found


def _entry(item: Any, index: int, source: str) -> ApiKey:
    where = f"{source}: keys[{index}]"
    if not isinstance(item, dict):
        raise ConfigurationError(f"{where} must be an object")
    tenant, digest, name = item.get("tenant"), item.get("sha256"), item.get("name")
    if not isinstance(tenant, str) or not tenant.strip() or len(tenant) > 256:
        raise ConfigurationError(f"{where}.tenant must be a non-empty string")
    if not isinstance(digest, str) or not _DIGEST.match(digest.lower()):
        message = f"{where}.sha256 must be 64 hex digits (printf %s KEY | sha256sum)"
        raise ConfigurationError(message)
    if name is not None and not isinstance(name, str):
        raise ConfigurationError(f"{where}.name must be a string")
    return ApiKey(tenant, digest.lower(), name)


def _check_keys(keys: tuple[ApiKey, ...]) -> None:
    tenants: dict[str, str] = {}
    for key in keys:
        if not _DIGEST.match(key.sha256):
            message = f"API key digest {key.sha256[:12]!r}... is not 64 hex digits"
            raise ConfigurationError(message)
        if tenants.setdefault(key.sha256, key.tenant) != key.tenant:
            message = f"one API key is listed for tenants {tenants[key.sha256]!r} "
            message += f"and {key.tenant!r}"
            raise ConfigurationError(message)
