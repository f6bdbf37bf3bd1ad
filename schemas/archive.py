"""The archive's Arrow schema, its on-storage layout and its metadata keys (spec: archive_v1.md).

Kept free of Ray and torch so that any tool (pyarrow, DuckDB, Spark) can read an archive
with nothing but this file and the spec.
"""

from __future__ import annotations

import pyarrow as pa

ARCHIVE_FORMAT = "resulic-archive"
ARCHIVE_VERSION = 1

# Layout under the archive root (any fsspec URL).
META_FILE = "_archive.json"  # archive-level metadata, written once when the archive is created
DATA_DIR = "data"  # immutable Parquet files; a file is committed when it appears here
STAGING_DIR = "_staging"  # files being written; never read, cleaned by the next job
INDEX_FILE = "_index/index.parquet"  # key -> (file, row group, row): derived, rebuilt from DATA_DIR
JOBS_DIR = "_jobs"  # one summary JSON per job
QUARANTINE_DIR = "_quarantine"  # data files that could not be read, each beside a JSON of why
COMPACT_PLAN = "_compact/plan.json"  # a compaction under way: its input and output files (archive_v1.md §6)
INDEXED_FILES_META = b"resulic.indexed_files"  # index metadata: every data file it has read, one per line

STATUS_WRITTEN = "written"
STATUS_FAILED = "failed"
STATUS_UNCHANGED = "unchanged"  # in summaries only: unchanged assets are not encoded again
STATUS_STILL_FAILED = "still_failed"  # in summaries only: failed before, source unchanged, not retried
# In jobs only: unchanged by content although the listing's fingerprint changed (a touched or
# copied file). Counted as unchanged; its archived row is committed again under the new
# fingerprint, so that the next job skips it before reading it.
STATUS_REFRESHED = "refreshed"
STATUS_SKIPPED = (STATUS_UNCHANGED, STATUS_STILL_FAILED, STATUS_REFRESHED)  # rows a job counts but does not process
STATUS_SHARD = "shard"  # a WebDataset shard read to its end (key "<shard>/"): not an asset
ROW_STATUSES = (STATUS_WRITTEN, STATUS_FAILED, STATUS_SHARD)  # a data row's; readers ignore rows of any other

ROW_GROUP_ROWS = 32  # restoring one asset reads one row group: a few dozen bitstreams at most

ASSET_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # relative path in the source; unique per archive
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("source_fingerprint", pa.string()),  # size + mtime/ETag from the listing
        pa.field("source_size", pa.int64()),
        pa.field("source_sha256", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("bitstream", pa.large_binary()),
        pa.field("bits_header", pa.int64()),
        pa.field("bits_hyper", pa.int64()),
        pa.field("bits_latent", pa.int64()),
        pa.field("bits_text", pa.int64()),
        pa.field("bpp", pa.float64()),
        pa.field("preset", pa.string()),
        pa.field("model_id", pa.string()),  # hex, as in the bitstream header
        pa.field("rate_level", pa.int32()),
        pa.field("caption", pa.string()),  # a caption the source already had (manifest column, XMP, EXIF)
        pa.field("caption_source", pa.string()),  # manifest | xmp | exif | model | refused (null: none)
        pa.field("caption_original", pa.string()),  # the caption of the original that the residual used
        pa.field("caption_reconstruction", pa.string()),  # the caption of the latent-only reconstruction
        pa.field("residual_text", pa.string()),  # what the bitstream's text section holds ("" = no section)
        pa.field("status", pa.string(), nullable=False),  # written | failed | shard (ROW_STATUSES)
        pa.field("error", pa.string()),
        pa.field("seconds_read", pa.float64()),
        pa.field("seconds_decode", pa.float64()),
        pa.field("seconds_encode", pa.float64()),
        pa.field("seconds_verify", pa.float64()),
        pa.field("seconds_caption", pa.float64()),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("written_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("file", pa.string(), nullable=False),  # relative to the archive root
        pa.field("row_group", pa.int32(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),  # within the row group
        pa.field("source_uri", pa.string()),
        pa.field("source_fingerprint", pa.string()),
        pa.field("source_sha256", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("bpp", pa.float64()),
        pa.field("written_at", pa.timestamp("us", tz="UTC"), nullable=False),
        # The key's newest row whatever its status (the row above is the newest written one when
        # there is one): a failure newer than the archived asset, so that a job does not retry,
        # and commit again, a source that failed and has not changed since.
        pa.field("last_status", pa.string(), nullable=False),
        pa.field("last_source_fingerprint", pa.string()),
        pa.field("last_source_sha256", pa.string()),
        pa.field("last_written_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)

LAST_COLUMNS = {"last_status": "status", "last_source_fingerprint": "source_fingerprint",
                "last_source_sha256": "source_sha256", "last_written_at": "written_at"}  # fmt: skip

# Columns the index is built from (read from data files without touching the bitstreams).
INDEX_SOURCE_COLUMNS = [f.name for f in INDEX_SCHEMA if f.name not in ("file", "row_group", "row", *LAST_COLUMNS)]
