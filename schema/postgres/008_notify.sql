-- tokenvault fleet schema v8: hosts wake on NOTIFY instead of polling. Any change to an account
-- (a lease taken or ended, new tokens, a state, a setting) or to a grant sends 'data' on channel
-- `tokenvault`; a new alert row sends 'alerts'. PostgreSQL delivers them only when the
-- transaction commits, and folds repeats within one transaction into one. Hosts whose LISTEN
-- connection is down poll as before.
CREATE FUNCTION tokenvault_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tokenvault', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER accounts_notify AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify('data');
CREATE TRIGGER grants_notify AFTER INSERT OR UPDATE OR DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify('data');
CREATE TRIGGER alerts_notify AFTER INSERT ON alerts
    FOR EACH ROW EXECUTE FUNCTION tokenvault_notify('alerts');
