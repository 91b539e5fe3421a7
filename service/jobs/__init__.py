"""Jobs: wire types (schema), the state table (states), database rows (db) and the store (store)."""
