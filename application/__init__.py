"""What the API and the CLI share: getting to a usable database, and the use cases
(search, upload, edit, delete, models) composed from ``db`` and ``workers``."""
