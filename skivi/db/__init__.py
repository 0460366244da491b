"""Internal. Not a public API.

The database layer: connections (`pool`), when and how long to wait before trying the
database again (`retry`), the named queries loaded from `skivi/sql/queries` (`queries`), the
migration runner (`migrate`) and the embedded PostgreSQL used when no database URL is given
(`embedded`).
"""
