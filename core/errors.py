"""The small tree of errors pgclip raises on purpose.

Driver errors are translated into these once, where they happen (see
``pgclip.db.engine``); the CLI prints one line for any of them and the API maps
them to HTTP statuses in one function.
"""


class PgclipError(Exception):
    """Base of every error pgclip reports to a user as one line."""


class ConfigError(PgclipError):
    """A setting is malformed or names something that does not exist."""


class DatabaseUnavailable(PgclipError):
    """The database cannot be reached, refused the login, or lacks pgvector."""


class SchemaNotReady(PgclipError):
    """The database is reachable but not migrated to the code's schema head."""


class ModelLoadError(PgclipError):
    """A CLIP model or its weights cannot be loaded."""


class NotFound(PgclipError):
    """A requested row (image, model, job) does not exist."""


class NotReady(PgclipError):
    """The request is right but cannot be answered yet: no active model, or an image
    without a vector for it (the API's 409; the SQL functions' SQLSTATE 55000)."""


class InvalidInput(PgclipError):
    """A user-supplied value is malformed (bad image, bad filter, bad manifest)."""
