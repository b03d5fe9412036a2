-- A message handed to a WebSocket push is claimed until `claimed_until` (RFC
-- 3339 text in UTC): `GET /messages/` and other pushes pass it by, so that no
-- message reaches two of them; once written it is deleted, and if the push
-- stops first the claim is released (or, if its replica died, runs out).
ALTER TABLE messages ADD COLUMN claimed_until TEXT;
