"""The usage rollups' media measures: seconds of audio in and out, images, seconds of video.

Revision ID: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

MEASURES = (
    ("audio_in_s", sa.Float()),
    ("audio_out_s", sa.Float()),
    ("images", sa.BigInteger()),
    ("video_s", sa.Float()),
)


def upgrade() -> None:
    for name, kind in MEASURES:  # the rows written before have none: 0
        op.add_column(
            "usage_minutes", sa.Column(name, kind, nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_minutes") as table:  # SQLite drops columns by a copy
        for name, _ in reversed(MEASURES):
            table.drop_column(name)
