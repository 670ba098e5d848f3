-- tokenvault fleet schema v8: hosts wake on NOTIFY instead of polling. A change to an account
-- (a lease taken or ended, new tokens, a state, a setting) sends 'account:ID' on channel
-- `tokenvault` (a host waiting for that account's refresh wakes on its own account only), a
-- change to a grant 'data', a new alert row 'alerts'. PostgreSQL delivers them only when the
-- transaction commits, and folds repeats within one transaction into one. Hosts whose LISTEN
-- connection is down poll as before.
CREATE FUNCTION tokenvault_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tokenvault', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE FUNCTION tokenvault_notify_account() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('tokenvault', 'account:' || OLD.id);
    ELSE
        PERFORM pg_notify('tokenvault', 'account:' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_notify AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify_account();
CREATE TRIGGER grants_notify AFTER INSERT OR UPDATE OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify('data');
CREATE TRIGGER alerts_notify AFTER INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify('alerts');
