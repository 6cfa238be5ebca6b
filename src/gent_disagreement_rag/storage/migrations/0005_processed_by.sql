-- Which host and worker wrote an episode's current segments (a fleet shares one database).
ALTER TABLE episodes ADD COLUMN processed_by text;
