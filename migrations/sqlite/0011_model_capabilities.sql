-- What a model can do beyond text: read images, call tools, structured output (SPEC §6, §9).
ALTER TABLE models ADD COLUMN cap_vision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN cap_tools INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN cap_json INTEGER NOT NULL DEFAULT 0;
UPDATE models SET cap_vision = 1, cap_tools = 1, cap_json = 1 WHERE id = 'gpt-4o-mini' AND provider = 'openai';
UPDATE models SET cap_tools = 1, cap_json = 1 WHERE id = 'deepseek-chat' AND provider = 'deepseek';
