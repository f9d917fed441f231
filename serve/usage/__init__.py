"""The usage ledger and the keys an admin manages, kept in a real database (SQLite in a file by
default, PostgreSQL for clusters) through SQLAlchemy, its schema migrated by Alembic."""
