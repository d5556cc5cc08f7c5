-- The staff database: who works here, in which room, and their home zipcode.
-- Created once when staff-db is first activated; later changes go in migrations/.
CREATE TABLE staff (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    room TEXT NOT NULL,
    zipcode TEXT NOT NULL
);

INSERT INTO staff (id, name, room, zipcode) VALUES
    (1, 'Sander van der Burg', 'HB08.230', '2628CD'),
    (2, 'Eelco Dolstra', 'HB08.250', '2611AB'),
    (3, 'Ada Lovelace', 'LB01.110', '3011XY'),
    (4, 'Grace Hopper', 'LB01.120', '1012JS'),
    (5, 'Edsger Dijkstra', 'HB08.230', '5611AZ');
