"""API keys in the config: where each key is read from and which models it may use.

A key's value never sits in the config itself (Serve configs are shown by the Ray dashboard
and stored by KubeRay): an entry names an environment variable (``key_env``) or a file
(``key_file``, e.g. a mounted Kubernetes Secret), read where the platform serves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator

from common.base_pydantic import StrictModel

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
MIN_KEY_LENGTH = 16  # characters; a shorter key is guessed too soon


class APIKeyEntry(StrictModel):
    """One API key: its name (for logs and limits), its source, and its models."""

    name: str = Field(
        pattern=NAME_PATTERN,
        max_length=64,
        description="the key's name, unique, by which logs, metrics and rate limits know it",
    )
    key_env: str | None = Field(default=None, description="environment variable holding the key")
    key_file: str | None = Field(
        default=None, description="file holding the key (a mounted Secret)"
    )
    models: list[str] = Field(
        default_factory=list,
        description="model ids this key may use, variants included; empty: every model",
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="across every replica; then 429"
    )
    tokens_per_minute: int | None = Field(
        default=None, ge=1, description="prompt + completion tokens; then 429"
    )
    monthly_token_budget: int | None = Field(
        default=None,
        ge=1,
        description="prompt + completion tokens per calendar month (UTC), counted by the usage "
        "ledger (usage.database); then 429 monthly_token_budget_exceeded until the month ends",
    )
    daily_token_budget: int | None = Field(
        default=None,
        ge=1,
        description="prompt + completion tokens per day (UTC), counted by the usage ledger; "
        "then 429 daily_token_budget_exceeded until the day ends",
    )
    admin: bool = Field(
        default=False,
        description="sees process and actor ids in /ready's placement, and every id in errors",
    )

    @model_validator(mode="after")
    def _one_source(self) -> APIKeyEntry:
        if (self.key_env is None) == (self.key_file is None):
            raise ValueError(
                "set exactly one of key_env (an environment variable) or key_file (a file path)"
            )
        return self

    def missing(self) -> str | None:
        """Why this key cannot be read here, or None."""
        if self.key_env is not None and not os.environ.get(self.key_env, "").strip():
            return f"key {self.name!r}: environment variable {self.key_env!r} is not set here"
        if self.key_file is not None and not _read(self.key_file):
            return f"key {self.name!r}: file {self.key_file!r} is missing, unreadable or empty here"
        return None

    def secret(self) -> str:
        return (
            os.environ.get(self.key_env, "") if self.key_env else _read(self.key_file or "")
        ).strip()

    def key(self, secret: str) -> APIKey:
        """This entry's key, holding ``secret`` ("" for a file's key known by its path alone)."""
        return APIKey(
            secret,
            self.name,
            tuple(self.models),
            self.requests_per_minute,
            self.tokens_per_minute,
            admin=self.admin,
            key_file=self.key_file,
            monthly_token_budget=self.monthly_token_budget,
            daily_token_budget=self.daily_token_budget,
        )


def refuse_inline_keys(value: Any) -> Any:
    """A plain string in ``api_keys`` would put the key in the Serve config: refuse it."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, str):
                raise ValueError(
                    f"api_keys[{index}] is a key written in the config, where the Ray dashboard "
                    "shows it; give it a name and a source instead: "
                    "{name: ..., key_env: VARIABLE} or {name: ..., key_file: /path}, "
                    "or list plain keys in the variable named by api_keys_env"
                )
    return value


@dataclass(frozen=True)
class APIKey:
    """A key as the router and the replicas check it: by its SHA-256 ``digest``, which is all a
    key sent to running replicas as ``user_config`` carries (Serve shows that config)."""

    secret: str = field(repr=False)  # never in a log line or a traceback; "" when sent as digest
    name: str
    models: tuple[str, ...] = ()  # empty: every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    admin: bool = False  # sees process, actor and node ids in /ready; other keys see them redacted
    key_file: str | None = None  # read again while serving: a rotated Secret applies at once
    digest: str = field(default="", repr=False)
    # tokens per calendar month and day (UTC), counted by the usage ledger; None: no budget
    monthly_token_budget: int | None = None
    daily_token_budget: int | None = None

    def allows(self, model_id: str) -> bool:
        """Whether this key may use ``model_id`` (a variant ``base:name`` goes with its base)."""
        return (
            not self.models or model_id in self.models or model_id.partition(":")[0] in self.models
        )

    def __post_init__(self) -> None:
        if self.secret and not self.digest:
            object.__setattr__(self, "digest", key_digest(self.secret.encode()))

    def live(self) -> dict[str, Any]:
        """The key as running replicas get it (``user_config``): its digest, never its value; a
        file's key by its path alone (each replica reads the file itself)."""
        fields = dataclasses.asdict(self)
        fields.pop("secret")
        fields["models"] = list(self.models)
        if self.key_file:
            fields["digest"] = ""
        return fields

    @classmethod
    def from_live(cls, fields: dict[str, Any]) -> APIKey:
        return cls(secret="", **{**fields, "models": tuple(fields.get("models") or ())})

    def reread(self) -> APIKey | None:
        """A file's key as the file holds it now (None: missing, unreadable or empty: revoked);
        any other key unchanged."""
        if self.key_file is None:
            return self
        secret = _read(self.key_file)
        if len(secret) < MIN_KEY_LENGTH:  # emptied (revoked), or a key too short to keep
            return None
        digest = key_digest(secret.encode())
        return (
            self if digest == self.digest else dataclasses.replace(self, secret="", digest=digest)
        )


def key_digest(presented: bytes) -> str:
    return hashlib.sha256(presented).hexdigest()


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""
