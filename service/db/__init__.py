"""The database, shared by every domain: tables.py declares the tables (SQLAlchemy rows on one
Base, which Alembic's migrations follow), engine.py opens it (Database: read and write sessions,
SQLite's writer turns, the driver-level hot reads) and migrates it. Each domain keeps its own SQL
in its store module; nothing here knows what a job or a file is for."""
