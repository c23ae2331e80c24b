-- Turn locks are leases (issue 13): every node renews its own locks by `turn_node` every few
-- seconds, and every node sweeps for locks whose lease ran out (`turn_expires`). Both look-ups
-- need an index on a table that holds every conversation.
CREATE INDEX idx_conversations_turn_node ON conversations (turn_node);
CREATE INDEX idx_conversations_turn_expires ON conversations (turn_expires);
