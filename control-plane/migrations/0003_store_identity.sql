-- A random id fixed when the database is created, so a gateway can tell a
-- restored or replaced database (whose versions mean something else) from
-- the one it synced from, and resync from scratch. One row; the CHECK keeps
-- it that way.
CREATE TABLE store_identity (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    id TEXT NOT NULL
);
