-- A per-user ledger sequence assigned at commit (issue 13 defect 3): row ids are minted on each
-- node, so their order is not commit order across nodes; `seq` is, because it is taken from
-- `users.ledger_seq` under the user's row lock in the transaction that changes the balance.
ALTER TABLE users ADD COLUMN ledger_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credit_ledger ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
-- Rows written before: their id order, per user.
UPDATE credit_ledger l
    JOIN (SELECT id, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) AS rn FROM credit_ledger) x
    ON x.id = l.id
    SET l.seq = x.rn;
UPDATE users u SET ledger_seq = (SELECT COALESCE(MAX(seq), 0) FROM credit_ledger WHERE user_id = u.id);
CREATE UNIQUE INDEX idx_ledger_user_seq ON credit_ledger (user_id, seq);
