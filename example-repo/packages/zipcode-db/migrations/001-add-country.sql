-- Zipcodes get a country; all seed rows are Dutch.
ALTER TABLE zipcodes ADD COLUMN country TEXT NOT NULL DEFAULT 'NL';
