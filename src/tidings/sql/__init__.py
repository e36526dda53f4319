"""The SQL layer: the app's database, its schema, and transactions that messages join (the outbox).

```python
db = Database("postgresql+asyncpg://app@db/shop")
await db.create_schema()                 # or `tidings db init module:app`
async with db.transaction() as connection:
    ...                                  # business writes; SqlChannel.send joins this transaction
```
"""

from __future__ import annotations

from tidings.sql._database import SCHEMA_VERSION, Backend, Database
from tidings.sql._errors import DatabaseUnavailable, SchemaMissing, TransactionRolledBack
from tidings.sql._registry import acquire_database, release_database
from tidings.sql._scope import Callback, TransactionScope, current_connection, current_scope
from tidings.sql._stores import SqlDeadLetterStore, SqlDeduplicationStore, SqlScheduleLock

__all__ = [
    "SCHEMA_VERSION",
    "Backend",
    "Callback",
    "Database",
    "DatabaseUnavailable",
    "SchemaMissing",
    "SqlDeadLetterStore",
    "SqlDeduplicationStore",
    "SqlScheduleLock",
    "TransactionRolledBack",
    "TransactionScope",
    "acquire_database",
    "current_connection",
    "current_scope",
    "release_database",
]
