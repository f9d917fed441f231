"""The ledger's tables. Usage is kept as rollups (one row per key, model, endpoint, status and
minute), never one row per request: a usage page reads a month of them in one query."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class UsageRow(Base):
    """What one key spent on one model and endpoint in one minute, by answer status."""

    __tablename__ = "usage_minutes"

    minute: Mapped[datetime] = mapped_column(DateTime(timezone=False), primary_key=True)  # UTC
    key_name: Mapped[str] = mapped_column(String(64), primary_key=True)  # "" with no keys
    model: Mapped[str] = mapped_column(String(256), primary_key=True)  # "" before one was known
    endpoint: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[int] = mapped_column(Integer, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)  # the sum, over its requests
    # media (revision 0002): seconds of audio in and out, images, seconds of video
    audio_in_s: Mapped[float] = mapped_column(Float, default=0.0)
    audio_out_s: Mapped[float] = mapped_column(Float, default=0.0)
    images: Mapped[int] = mapped_column(BigInteger, default=0)
    video_s: Mapped[float] = mapped_column(Float, default=0.0)


class StoredKey(Base):
    """A key made through ``/admin/keys``: its SHA-256 digest only (the secret is shown once)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[str] = mapped_column(Text, default="")  # comma-separated; empty: every model
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    monthly_token_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    daily_token_budget: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=False))  # UTC
