-- The zipcodes database: which city a zipcode is in.
CREATE TABLE zipcodes (
    zipcode TEXT PRIMARY KEY,
    street TEXT NOT NULL,
    city TEXT NOT NULL
);

INSERT INTO zipcodes (zipcode, street, city) VALUES
    ('2628CD', 'Mekelweg', 'Delft'),
    ('2611AB', 'Oude Delft', 'Delft'),
    ('3011XY', 'Coolsingel', 'Rotterdam'),
    ('1012JS', 'Dam', 'Amsterdam'),
    ('5611AZ', 'Stratumseind', 'Eindhoven');
