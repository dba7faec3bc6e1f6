-- Chat items (SQLite's 006): chat messages (JSON array) and request options of an item's own.
ALTER TABLE items ADD COLUMN messages TEXT;
ALTER TABLE items ADD COLUMN options TEXT;
