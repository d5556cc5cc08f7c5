-- Staff members get an email address; existing rows get an empty one.
ALTER TABLE staff ADD COLUMN email TEXT NOT NULL DEFAULT '';
UPDATE staff SET email = lower(replace(name, ' ', '.')) || '@example.org';
