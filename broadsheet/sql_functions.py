"""The SQLite functions and table-valued functions that SQL from outside
may use: visitors' own SQL on a read node (``replica/sandbox.py``, whose
authorizer enforces these lists) and the team's saved queries, which are
checked against them when saved (``primary/queries.py``), since read nodes
run those in the same sandbox."""

from __future__ import annotations

# Functions known to be pure computations on their arguments. Left out on
# purpose: fts3_tokenizer (reads and plants pointers), load_extension (loads
# a file), sqlite_log (writes to the process's log), optimize (an FTS write),
# fts5 (the FTS5 API pointer), rtreenode/rtreedepth/rtreecheck (parse raw
# r-tree node blobs: debugging aids with a history of bounds bugs).
SAFE_FUNCTIONS = frozenset(
    """
    -> ->> abs acos acosh asin asinh atan atan2 atanh avg bm25 ceil ceiling changes char
    coalesce cos cosh count cume_dist current_date current_time current_timestamp date
    datetime degrees dense_rank escape_fts exp first_value floor format glob group_concat
    hex highlight ifnull iif instr json json_array json_array_length json_extract
    json_group_array json_group_object json_insert json_object json_patch json_quote
    json_remove json_replace json_set json_type json_valid julianday lag last_insert_rowid
    last_value lead length like likelihood likely ln log log10 log2 lower ltrim match
    matchinfo max min mod nth_value ntile nullif offsets percent_rank pi pow power printf
    quote radians random randomblob rank replace round row_number rtrim sign sin sinh
    snippet soundex sqlite_compileoption_get sqlite_compileoption_used sqlite_source_id
    sqlite_version sqrt strftime substr substring subtype sum tan tanh time total
    total_changes trim trunc typeof unicode unixepoch unlikely upper zeroblob
    """.split()
)

# Virtual table modules visitors may use by name as table functions. The
# others (dbstat: the file's page layout; sqlite_stmt: the SQL of every
# statement on the connection, other visitors' included) stay out. (A
# published table named exactly like a module, "dbstat" or "fts5", would be
# refused too: the authorizer sees only the name.)
SAFE_TABLE_FUNCTIONS = frozenset({"json_each", "json_tree"})
