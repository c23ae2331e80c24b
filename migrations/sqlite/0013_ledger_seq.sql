-- A per-user ledger sequence assigned at commit (issue 13 defect 3): row ids are minted on each
-- node, so their order is not commit order across nodes; `seq` is, because it is taken from
-- `users.ledger_seq` under the user's row lock in the transaction that changes the balance.
ALTER TABLE users ADD COLUMN ledger_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credit_ledger ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
-- Rows written before: their id order, per user (one node then, so commit order).
UPDATE credit_ledger SET seq = (
    SELECT COUNT(*) FROM credit_ledger c WHERE c.user_id = credit_ledger.user_id AND c.id <= credit_ledger.id
);
UPDATE users SET ledger_seq = (SELECT COALESCE(MAX(seq), 0) FROM credit_ledger WHERE user_id = users.id);
CREATE UNIQUE INDEX idx_ledger_user_seq ON credit_ledger (user_id, seq);
