"""The usage rollups and the admin's keys.

Revision ID: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_minutes",
        sa.Column("minute", sa.DateTime(), primary_key=True),
        sa.Column("key_name", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("endpoint", sa.String(128), primary_key=True),
        sa.Column("status", sa.Integer(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
    )
    op.create_index("usage_minutes_by_key", "usage_minutes", ["key_name", "minute"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer()),
        sa.Column("tokens_per_minute", sa.Integer()),
        sa.Column("monthly_token_budget", sa.BigInteger()),
        sa.Column("daily_token_budget", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index("usage_minutes_by_key", "usage_minutes")
    op.drop_table("usage_minutes")
