"""The lake's free-text search text: one column-like value per item, computed by the database.

Free text (``q``, :mod:`.free_text`) looks in many fields of an item (variables' long names
and units, title, grid, ...) for words at a word start. Testing each field with a handful of
``LIKE`` patterns on JSON re-extracted per row cost ~50x a search without ``q``; instead each
item carries its search text, written once when it is stored: the searched fields
(:data:`twinlab.contract.FREE_TEXT_FIELDS`), upper-cased, each word start marked
(:func:`twinlab.contract.mark_words`), so that a word is one ``LIKE`` on one value.

It is the item property :data:`twinlab.contract.SEARCH_TEXT_PROPERTY` (``twinhub:search``;
pgstac's queryables can only read the item's JSON, so it is part of it), set by a trigger on
every insert and update, whatever writes the item (the loader, the transactions API,
``pypgstac load``): a value a client sends is replaced. A GIN trigram index (``pg_trgm``) on
it can serve selective words in large lakes (``with_index``; not installed by default: at
10,000 items a search scans the partition's search texts in a few ms).

:func:`install_sql` is run as the database's owner each time the platform starts (the
embedded cluster's superuser, or the migrating role of an external database): it replaces
the functions (the rules may have changed), and fills in the items whose text is missing or
out of date (idempotent: a second run changes nothing).
"""

from __future__ import annotations

from twinlab.contract import FREE_TEXT_FIELDS, SEARCH_MARK, SEARCH_TEXT_PROPERTY, WORD_STARTS

#: Name of the trigram index on the search text.
INDEX = "twinhub_search_trgm"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _field(name: str) -> str:
    if name in ("id", "collection"):
        return name
    return f"pgstac.twinhub_field_text(content->'properties'->{_literal(name)})"


def install_sql(with_index: bool = False) -> str:
    """SQL (one transaction) that installs or updates the search text, its trigger, its
    queryable and index, and backfills items."""
    mark = f"chr({ord(SEARCH_MARK)})"
    # a POSIX bracket expression of WORD_STARTS: '-' last, the others as they are
    chars = "".join(c for c in WORD_STARTS if c != "-") + ("-" if "-" in WORD_STARTS else "")
    pattern = _literal(f"([{chars}])")
    parts = ", ".join(f"pgstac.twinhub_marked({_field(f)})" for f in FREE_TEXT_FIELDS)
    prop = _literal(SEARCH_TEXT_PROPERTY)
    path = "'{properties," + SEARCH_TEXT_PROPERTY + "}'"
    text = "pgstac.twinhub_search_text({0}id, {0}collection, {0}content)"
    index = (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n"
        f"CREATE INDEX IF NOT EXISTS {INDEX} ON pgstac.items USING gin "
        f"(pgstac.to_text(content->'properties'->{prop}) gin_trgm_ops);\n"
        if with_index
        else ""
    )
    return f"""BEGIN;
CREATE OR REPLACE FUNCTION pgstac.twinhub_marked(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT {mark} || regexp_replace(t, {pattern}, '\\1' || {mark}, 'g')
$$;
CREATE OR REPLACE FUNCTION pgstac.twinhub_field_text(j jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(j) WHEN 'string' THEN j #>> '{{}}'
        WHEN 'object' THEN j::text WHEN 'array' THEN j::text END
$$;
CREATE OR REPLACE FUNCTION pgstac.twinhub_search_text(id text, collection text, content jsonb)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT upper(concat_ws(chr(10), {parts}))
$$;
CREATE OR REPLACE FUNCTION pgstac.twinhub_search_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.content ? 'properties' THEN
        NEW.content := jsonb_set(NEW.content, {path}, to_jsonb({text.format("NEW.")}));
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS twinhub_search ON pgstac.items;
CREATE TRIGGER twinhub_search BEFORE INSERT OR UPDATE ON pgstac.items
    FOR EACH ROW EXECUTE FUNCTION pgstac.twinhub_search_trigger();
UPDATE pgstac.items SET content = jsonb_set(content, {path}, to_jsonb({text.format("")}))
    WHERE content ? 'properties'
    AND content->'properties'->>{prop} IS DISTINCT FROM {text.format("")};
{index}COMMIT;
"""
