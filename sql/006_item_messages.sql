-- Chat items: an item may carry chat messages (JSON array of {role, content}) instead of a bare
-- prompt, and request options of its own (OpenAI body fields from a Batch API file) merged
-- over its model's. `prompt` stays NOT NULL: for a chat item it holds the rendered
-- conversation, which reports, graders ({prompt}) and exports read as before.
ALTER TABLE items ADD COLUMN messages TEXT;
ALTER TABLE items ADD COLUMN options TEXT;
