-- Usernames are unique regardless of case (as MySQL's default collation already makes them),
-- and case-insensitive lookups (`username = ? COLLATE NOCASE`) use this index instead of a scan.
CREATE UNIQUE INDEX uq_users_username_nocase ON users (username COLLATE NOCASE);
