-- Rating and balance debit (the model and the rules: the worker's rating module doc).
--
-- Tariffs are data the billing team edits without a deploy: rate plans, rates by longest E.164
-- prefix with a validity period, accounts with a balance and a plan. The worker rates each CDR
-- in the transaction that merges it and books the difference between its charge and its ledger
-- entries, so the ledger of a call always sums to the charge of its CDR as it stands.

CREATE TABLE rate_plan (
    id          text PRIMARY KEY,
    -- ISO 4217 code of every price of the plan.
    currency    text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description text NOT NULL DEFAULT ''
);

CREATE TABLE rate (
    plan_id              text          NOT NULL REFERENCES rate_plan (id),
    -- Leading E.164 digits (no '+') of the destinations priced; '' matches every number.
    prefix               text          NOT NULL CHECK (prefix ~ '^[0-9]{0,15}$'),
    -- Applies to calls whose rating time (answer, or setup when unanswered) is in
    -- [valid_from, valid_to).
    valid_from           timestamptz   NOT NULL,
    valid_to             timestamptz   CHECK (valid_to > valid_from),
    price_per_minute     numeric(12,6) NOT NULL CHECK (price_per_minute >= 0),
    -- Added once to every answered call.
    connection_fee       numeric(12,4) NOT NULL DEFAULT 0 CHECK (connection_fee >= 0),
    -- The whole charge of an unanswered (failed or cancelled) call.
    setup_fee            numeric(12,4) NOT NULL DEFAULT 0 CHECK (setup_fee >= 0),
    -- Billing increments in seconds: 60/60, 30/6, 1/1, ...
    initial_increment    integer       NOT NULL DEFAULT 60 CHECK (initial_increment >= 1),
    subsequent_increment integer       NOT NULL DEFAULT 60 CHECK (subsequent_increment >= 1),
    -- Least billable seconds of an answered call.
    min_billable         integer       NOT NULL DEFAULT 0 CHECK (min_billable >= 0),
    description          text          NOT NULL DEFAULT '',
    PRIMARY KEY (plan_id, prefix, valid_from)
);

CREATE TABLE account (
    -- The caller id (src_user, or the acc extra given to the worker with --account-key).
    id           text        PRIMARY KEY,
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    rate_plan_id text        REFERENCES rate_plan (id),
    -- Debits lower it; it may go negative.
    balance      numeric     NOT NULL DEFAULT 0,
    prepaid      boolean     NOT NULL DEFAULT false,
    -- A prepaid account with nothing left (for call admission, e.g. from Kamailio).
    exhausted    boolean     GENERATED ALWAYS AS (prepaid AND balance <= 0) STORED,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every debit (positive) and credit (negative) of an account for a call. A call's entries sum,
-- per account and currency, to the charge of its CDR (on its account), or to zero.
-- No foreign keys (their per-row checks cost a third of the settlement): the worker books only
-- calls it has just stored and accounts it has just locked, an account with entries cannot be
-- deleted (trigger below), and the entries outlive a purge of old CDRs.
CREATE TABLE ledger_entry (
    call_id    text          NOT NULL,
    seq        integer       NOT NULL CHECK (seq >= 1),
    account_id text          NOT NULL,
    currency   text          NOT NULL,
    amount     numeric(20,4) NOT NULL CHECK (amount <> 0),
    created_at timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (call_id, seq)
);

CREATE INDEX ledger_entry_account_idx ON ledger_entry (account_id, created_at);

ALTER TABLE cdr
    ADD COLUMN rating_status    text CHECK (rating_status IN ('rated', 'unrated')),
    ADD COLUMN unrated_reason   text CHECK (unrated_reason IN (
        'unknown_disposition', 'incomplete', 'no_caller', 'unknown_account', 'no_plan',
        'currency_mismatch', 'bad_destination', 'no_rate', 'out_of_range')),
    ADD COLUMN account_id       text,
    ADD COLUMN rate_plan_id     text,
    ADD COLUMN rate_prefix      text,
    ADD COLUMN rate_valid_from  timestamptz,
    ADD COLUMN billable_seconds integer,
    ADD COLUMN charge           numeric(20,4),
    ADD COLUMN currency         text,
    ADD COLUMN rated_at         timestamptz,
    ADD CONSTRAINT cdr_rating_consistent CHECK (
        (rating_status IS NULL AND unrated_reason IS NULL AND charge IS NULL)
        OR (rating_status = 'rated' AND unrated_reason IS NULL AND charge IS NOT NULL)
        OR (rating_status = 'unrated' AND unrated_reason IS NOT NULL AND charge IS NULL));

CREATE INDEX cdr_unrated_idx ON cdr (unrated_reason) WHERE rating_status = 'unrated';

-- A rate's terms are immutable: to change a price from T on, set valid_to = T on the old row
-- and insert a new row with valid_from = T (calls before T keep the old price, whenever their
-- records arrive). Only valid_to and description may be updated.
CREATE FUNCTION rate_terms_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.plan_id, NEW.prefix, NEW.valid_from, NEW.price_per_minute, NEW.connection_fee,
        NEW.setup_fee, NEW.initial_increment, NEW.subsequent_increment, NEW.min_billable)
       IS DISTINCT FROM
       (OLD.plan_id, OLD.prefix, OLD.valid_from, OLD.price_per_minute, OLD.connection_fee,
        OLD.setup_fee, OLD.initial_increment, OLD.subsequent_increment, OLD.min_billable) THEN
        RAISE EXCEPTION 'the terms of rate (%, %, %) cannot be changed in place', OLD.plan_id,
              OLD.prefix, OLD.valid_from
            USING HINT = 'set valid_to on this row and insert a new row valid from that moment';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER rate_terms_immutable
    BEFORE UPDATE OF plan_id, prefix, valid_from, price_per_minute, connection_fee, setup_fee,
                     initial_increment, subsequent_increment, min_billable ON rate
    FOR EACH ROW EXECUTE FUNCTION rate_terms_immutable();

-- The currency of a plan or an account is fixed: balances and ledger entries are in it.
CREATE FUNCTION currency_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.currency IS DISTINCT FROM OLD.currency THEN
        RAISE EXCEPTION 'the currency of % % cannot be changed', TG_TABLE_NAME, OLD.id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER rate_plan_currency_immutable BEFORE UPDATE OF currency ON rate_plan
    FOR EACH ROW EXECUTE FUNCTION currency_immutable();
CREATE TRIGGER account_currency_immutable BEFORE UPDATE OF currency ON account
    FOR EACH ROW EXECUTE FUNCTION currency_immutable();

-- An account with ledger entries is history: it cannot be deleted (nor its id changed).
CREATE FUNCTION account_keeps_its_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM ledger_entry WHERE account_id = OLD.id) THEN
        RAISE EXCEPTION 'account % has ledger entries and cannot be deleted or renamed', OLD.id;
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER account_keeps_its_ledger BEFORE DELETE OR UPDATE OF id ON account
    FOR EACH ROW EXECUTE FUNCTION account_keeps_its_ledger();
