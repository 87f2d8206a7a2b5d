-- The administrator token used to act as "admin", a name an OIDC subject
-- can have too: a token with `sub: "admin"` would have seen and revoked the
-- keys the administrator minted for itself. The administrator is now
-- "maas:admin", in a namespace no subject may enter (`maas_filter::keys::
-- check_subject`), and the keys it owned move there. Keys an OIDC user
-- "admin" minted cannot be told apart from those and move too: the safe
-- direction (an administrator may still list and revoke them; their
-- owner may not).
--
-- Each moved key gets its own new version, in id order, so incremental sync
-- brings gateways the new owner (their `x-maas-user`) and paging by version
-- stays exact. The counter is bumped first, which takes the writers' lock
-- (see `version.rs`), so no concurrent write can take these versions.
-- Portable SQL, as in 0001. No audit rows: this is a schema change, recorded
-- in `_sqlx_migrations`, and the audit log's seq skips the versions it used.

UPDATE change_counter
SET value = value + (SELECT COUNT(*) FROM api_keys WHERE owner = 'admin')
WHERE id = 1;

UPDATE api_keys
SET version = (SELECT value FROM change_counter WHERE id = 1)
    - (SELECT COUNT(*) FROM api_keys AS later
       WHERE later.owner = 'admin' AND later.id > api_keys.id)
WHERE owner = 'admin';

UPDATE api_keys SET owner = 'maas:admin' WHERE owner = 'admin';
