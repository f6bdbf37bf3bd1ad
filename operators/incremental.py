"""What a rerun skips: sources archived, or failed, before and unchanged since.

A job compares each listed source with the archive's index twice: by the listing's fingerprint
(size plus ETag or mtime, or a manifest's column) before reading any bytes, and by the content's
sha256 after reading (a copied or touched file whose bytes did not change). A key archived from
the same source is ``unchanged``. A key whose newest row is a failure of the same source is
``still_failed``: not retried and not committed again unless the job asks (``retry_failed``),
so that a broken file in a nightly bucket costs one row, not one row a night.

WebDataset shards are compared whole, by the shard's fingerprint: a shard read to its end
leaves a marker row (status ``shard``, key ``<shard>/``), and an unchanged shard with a marker
is not read again; its members are accounted for from the index.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from operators.archive import first_per_key
from schemas.archive import (INDEX_SCHEMA, STATUS_FAILED, STATUS_REFRESHED, STATUS_SHARD, STATUS_STILL_FAILED,
                            STATUS_UNCHANGED, STATUS_WRITTEN)

ARCHIVED_AT = ("file", "row_group", "row")  # where a key's archived row is (index columns)


def known_sources(index: pa.Table, retry_failed: bool = False) -> pa.Table:
    """Per key, the source it is archived from (``source_fingerprint``, ``source_sha256``) and
    where its row is (``archived_file``, ``archived_row_group``, ``archived_row``), and, unless
    retrying, the source of a failure newer than that (``failed_source_*``): what
    :func:`mark_unchanged` compares with. Keys with neither are left out."""
    written = pc.equal(index.column("status"), STATUS_WRITTEN)
    failed = pc.and_(pc.equal(index.column("last_status"), STATUS_FAILED), pa.scalar(not retry_failed))
    null = pa.nulls(index.num_rows, pa.string())
    table = pa.table({
        "key": index.column("key"),
        "source_fingerprint": pc.if_else(written, index.column("source_fingerprint"), null),
        "source_sha256": pc.if_else(written, index.column("source_sha256"), null),
        "failed_source_fingerprint": pc.if_else(failed, index.column("last_source_fingerprint"), null),
        "failed_source_sha256": pc.if_else(failed, index.column("last_source_sha256"), null),
        **{f"archived_{c}": pc.if_else(written, index.column(c), pa.nulls(index.num_rows, index.schema.field(c).type))
           for c in ARCHIVED_AT},
    })  # fmt: skip
    return table.filter(pc.or_(written, failed))


def mark_unchanged(batch: pa.Table, known: pa.Table, by: str, refresh: bool = True) -> pa.Table:
    """Set ``status`` of pending rows to unchanged where the key is archived from the same source,
    or to still_failed where its newest row failed on the same source, compared ``by`` the
    listing fingerprint (before reading) or the content sha256 (after). Skipped rows drop their
    bytes.

    By content, an archived row matched is one whose fingerprint has changed (it was read): with
    ``refresh`` it becomes ``refreshed``, with its row's place (``archived_*`` columns), so that
    the sink commits it again under the new fingerprint; else a touched file is read by every
    job. (WebDataset members are not refreshed: the shard's new marker is what skips them.)"""
    if by == "source_sha256":  # every block gets the columns, filled or not: one schema
        for c in ARCHIVED_AT:
            if f"archived_{c}" not in batch.column_names:
                batch = batch.append_column(f"archived_{c}", pa.nulls(batch.num_rows, INDEX_SCHEMA.field(c).type))
    if known.num_rows == 0 or batch.num_rows == 0:
        return batch
    idx = pc.index_in(batch.column("key"), value_set=known.column("key"))
    ours = batch.column(by)

    def same(column: str) -> pa.Array:
        return pc.fill_null(pc.equal(pc.take(known.column(column), idx), ours), False)

    pending = pc.is_null(batch.column("status"))
    # a row that failed while listed (a missing file, a duplicate key) is the same failure again
    # when the key's newest failure has its fingerprint: not committed again
    failing = pc.fill_null(pc.equal(batch.column("status"), STATUS_FAILED), False)
    unchanged, again = pc.and_(pending, same(by)), pc.and_(pc.or_(pending, failing), same(f"failed_{by}"))
    moved = pa.array([False] * batch.num_rows)
    if by == "source_sha256" and refresh:  # the same bytes under another (known) fingerprint
        listed = batch.column("source_fingerprint")
        moved = pc.and_(unchanged, pc.and_(pc.is_valid(listed), pc.invert(
            pc.fill_null(pc.equal(pc.take(known.column("source_fingerprint"), idx), listed), False))))
    status = pc.if_else(moved, pa.scalar(STATUS_REFRESHED), pc.if_else(unchanged, pa.scalar(STATUS_UNCHANGED),
                        pc.if_else(again, pa.scalar(STATUS_STILL_FAILED), batch.column("status"))))  # fmt: skip
    out = batch.set_column(batch.column_names.index("status"), "status", status)
    if by == "source_sha256":
        for c in ARCHIVED_AT:
            name = f"archived_{c}"
            at = pc.if_else(moved, pc.take(known.column(name), idx), out.column(name))
            out = out.set_column(out.column_names.index(name), name, at)
    if "data" in out.column_names:  # skipped bytes go no further
        data = pc.if_else(pc.or_(unchanged, again), pa.scalar(None, pa.large_binary()), out.column("data"))
        out = out.set_column(out.column_names.index("data"), "data", data)
    return out


def known_shards(index: pa.Table, retry_failed: bool = False) -> pa.Table:
    """The shards a job need not read, with what they hold: rows of ``shard`` (``<name>/``),
    ``shard_fingerprint``, ``key``, ``source_uri`` and ``status``. A shard qualifies when its
    newest marker or failure is its key's newest row; its members are the keys under it,
    archived (``unchanged``) or failed (``still_failed``). Every key under a shard's name comes
    from reading that shard; a member found unchanged by its bytes when the shard was read
    again (a touched shard) keeps its older row, so members are not matched by fingerprint. A
    shard that failed (cut short) adds its own row as ``still_failed``. A shard with a member
    that failed for a reason not its own (no fingerprint: the caption endpoint, memory) is read
    again, as, with ``retry_failed``, are shards with any failure."""
    keys = index.column("key")
    own = pc.ends_with(keys, "/")
    shard_rows = index.filter(pc.and_(own, pc.is_in(index.column("last_status"), pa.array([STATUS_SHARD, STATUS_FAILED]))))
    shards = pa.table({"shard": shard_rows.column("key"), "shard_fingerprint": shard_rows.column("last_source_fingerprint"),
                       "shard_status": shard_rows.column("last_status")})  # fmt: skip
    members = index.filter(pc.and_(pc.invert(own), pc.match_substring(keys, "/")))
    m_all = _members_of(members, shards)
    archived = pc.fill_null(pc.equal(m_all.column("status"), STATUS_WRITTEN), False)
    failed = pc.fill_null(pc.equal(m_all.column("last_status"), STATUS_FAILED), False)
    m = m_all.append_column("_status", pc.if_else(archived, pa.scalar(STATUS_UNCHANGED), pa.scalar(STATUS_STILL_FAILED)))
    m = m.filter(pc.or_(archived, failed))
    own_status = pc.if_else(pc.equal(shards.column("shard_status"), STATUS_FAILED), pa.scalar(STATUS_STILL_FAILED),
                            pa.scalar(STATUS_SHARD))  # fmt: skip
    out = pa.concat_tables([
        pa.table({"shard": m.column("shard"), "shard_fingerprint": m.column("shard_fingerprint"), "key": m.column("key"),
                  "source_uri": m.column("source_uri"), "status": m.column("_status")}),
        pa.table({"shard": shards.column("shard"), "shard_fingerprint": shards.column("shard_fingerprint"),
                  "key": shards.column("shard"), "source_uri": shard_rows.column("source_uri"), "status": own_status}),
    ])  # fmt: skip
    # a member that failed for a reason not its own (its source forgotten: the endpoint, memory)
    # is tried again, so its shard is read again
    again = m_all.filter(pc.and_(failed, pc.is_null(m_all.column("last_source_fingerprint")))).column("shard").to_pylist()
    if retry_failed:
        again += out.filter(pc.equal(out.column("status"), STATUS_STILL_FAILED)).column("shard").to_pylist()
    if again:
        out = out.filter(pc.invert(pc.is_in(out.column("shard"), value_set=pa.array(again, pa.string()))))
    return out.sort_by([("shard", "ascending"), ("key", "ascending")])


def _members_of(members: pa.Table, shards: pa.Table) -> pa.Table:
    """``members`` joined with the shard each is keyed under: a shard key is a path of one or
    more segments (``train/shard-0/``), so each member is tried at each depth shards have, and
    belongs to the deepest shard whose name it starts with (``a/`` and ``a/b/`` are two
    shards: ``a/b/x.png`` is ``a/b/``'s)."""
    depths = sorted({k.count("/") for k in shards.column("shard").to_pylist()})
    parts = pc.split_pattern(members.column("key"), "/")
    joined = []
    for depth in depths:
        deep = pc.greater(pc.list_value_length(parts), depth)
        some = members.filter(deep)
        head = pc.list_slice(pc.filter(parts, deep), 0, depth)
        some = some.append_column("shard", pc.binary_join_element_wise(pc.binary_join(head, "/"), "", "/"))
        joined.append(some.join(shards, "shard", join_type="inner"))
    if not joined:
        return members.append_column("shard", pa.nulls(members.num_rows, pa.string())).join(shards, "shard", join_type="inner")
    found = pa.concat_tables(joined)
    return first_per_key(found.sort_by([("key", "ascending"), ("shard", "descending")]))  # a deeper shard's name sorts after


def skip_known_shards(batch: pa.Table, shards: pa.Table) -> pa.Table:
    """Mark each pending shard row whose shard is in ``shards`` (:func:`known_shards`) with the
    same fingerprint as unchanged: it is not read. One row per shard still (the shard step keeps
    one shard per batch); :func:`account_skipped_shards` puts its members in its place."""
    if shards.num_rows == 0 or batch.num_rows == 0:
        return batch
    ids = pc.binary_join_element_wise(shards.column("shard"), shards.column("shard_fingerprint"), "\x00")
    ours = pc.binary_join_element_wise(batch.column("key"), batch.column("source_fingerprint"), "\x00")
    known = pc.fill_null(pc.is_in(ours, value_set=ids), False)
    skip = pc.and_(pc.is_null(batch.column("status")), known)
    # a shard that failed while listed (not found) and failed so before: not committed again
    again = pc.and_(pc.fill_null(pc.equal(batch.column("status"), STATUS_FAILED), False), known)
    status = pc.if_else(skip, pa.scalar(STATUS_UNCHANGED),
                        pc.if_else(again, pa.scalar(STATUS_STILL_FAILED), batch.column("status")))  # fmt: skip
    return batch.set_column(batch.column_names.index("status"), "status", status)


def account_skipped_shards(batch: pa.Table, shards: pa.Table) -> pa.Table:
    """Replace each skipped shard's row (unchanged, key ``<name>/``) by its members' rows from the
    index, unchanged or still failed: every asset of a shard is accounted for, unread."""
    skipped = pc.and_(pc.fill_null(pc.equal(batch.column("status"), STATUS_UNCHANGED), False),
                      pc.ends_with(batch.column("key"), "/"))  # fmt: skip
    if shards.num_rows == 0 or not pc.any(skipped).as_py():
        return batch
    names = batch.filter(skipped).column("key")
    rows = shards.filter(pc.and_(pc.is_in(shards.column("shard"), value_set=names),
                                 pc.not_equal(shards.column("status"), STATUS_SHARD)))  # fmt: skip
    members = pa.table({"key": rows.column("key"), "source_uri": rows.column("source_uri"),
                        "source_fingerprint": rows.column("shard_fingerprint"), "status": rows.column("status")})  # fmt: skip
    members = members.cast(batch.select(members.column_names).schema)
    return pa.concat_tables([batch.filter(pc.invert(skipped)), members], promote_options="default")
