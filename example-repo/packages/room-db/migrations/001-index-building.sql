-- Rooms are looked up by building too.
CREATE INDEX rooms_building ON rooms (building);
