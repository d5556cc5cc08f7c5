-- The rooms database: where each room is.
CREATE TABLE rooms (
    room TEXT PRIMARY KEY,
    floor INTEGER NOT NULL,
    building TEXT NOT NULL
);

INSERT INTO rooms (room, floor, building) VALUES
    ('HB08.230', 8, 'EEMCS Tower'),
    ('HB08.250', 8, 'EEMCS Tower'),
    ('LB01.110', 1, 'Lecture Hall Building'),
    ('LB01.120', 1, 'Lecture Hall Building'),
    ('LB02.010', 2, 'Lecture Hall Building');
