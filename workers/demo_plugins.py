"""Plugins behind the four example workflows in docs/examples/ (and `canvasflow demo`).

The CSV plugins do real work on real files; the media, analysis and deployment plugins simulate
their work (short sleeps, progress, logs) so a demo shows live steps without media libraries
or servers. Every file is written atomically and every id is derived from the run, so a step
that runs twice (delivery is at-least-once) produces the same result.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from typing import Any

from orchestrator.errors import StepError
from workers.plugins import plugin

# ---------------------------------------------------------------------------------------------
# Helpers (module functions, so the registry never mistakes them for step methods)
# ---------------------------------------------------------------------------------------------


def _short_id(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:10]


def _check_cancel(ctx: Any) -> None:
    if ctx.cancelled:
        raise StepError("cancelled", retryable=False)


def _read_csv(
    path: str, delimiter: str = ",", has_header: bool = True
) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter=delimiter))
    except FileNotFoundError:
        raise StepError(f"input file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StepError(f"cannot read CSV {path}: {exc}") from None
    if not rows:
        raise StepError(f"CSV file is empty: {path}", retryable=False)
    if has_header:
        return rows[0], rows[1:]
    return [f"col{i + 1}" for i in range(len(rows[0]))], rows


def _write_atomic(path: str, write: Any) -> int:
    """Write through a temp file and rename, so a re-run or a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def _write_csv(path: str, header: list[str], rows: list[list[Any]]) -> int:
    def write(fh: Any) -> None:
        out = csv.writer(fh)
        out.writerow(header)
        out.writerows(rows)

    return _write_atomic(path, write)


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _numeric_columns(header: list[str], rows: list[list[str]]) -> set[int]:
    """Columns whose non-empty values all parse as numbers (and that have at least one)."""
    found = set()
    for i in range(len(header)):
        values = [r[i] for r in rows if i < len(r) and r[i] != ""]
        if values and all(_float(v) is not None for v in values):
            found.add(i)
    return found


def _column(header: list[str], name: str, path: str) -> int:
    if name not in header:
        raise StepError(
            f"{path} has no column '{name}' (columns: {', '.join(header)})", retryable=False
        )
    return header.index(name)


def _interpolate(rows: list[list[str]], col: int) -> int:
    """Fill empty cells of a numeric column linearly between their known neighbours."""
    known = [i for i, r in enumerate(rows) if r[col] != ""]
    filled = 0
    for i, r in enumerate(rows):
        if r[col] != "":
            continue
        k = bisect.bisect_left(known, i)
        before = known[k - 1] if k > 0 else None
        after = known[k] if k < len(known) else None
        if before is not None and after is not None:
            lo, hi = float(rows[before][col]), float(rows[after][col])
            value = lo + (hi - lo) * (i - before) / (after - before)
        elif before is not None or after is not None:
            value = float(rows[before if before is not None else after][col])  # type: ignore[index]
        else:
            value = 0.0
        r[col] = f"{value:g}" if value != int(value) else str(int(value))
        filled += 1
    return filled


def _simulate_batch(
    ctx: Any, kind: str, output_directory: str, names: list[str], seconds: float
) -> dict[str, Any]:
    """Pretend to process `names`, spreading `seconds` over them with progress and a log each."""
    if not isinstance(seconds, int | float) or seconds < 0:
        raise StepError(f"seconds must be a non-negative number, got {seconds!r}", retryable=False)
    outputs = []
    for done, name in enumerate(names, 1):
        _check_cancel(ctx)
        time.sleep(seconds / max(len(names), 1))
        target = os.path.join(output_directory, name)
        outputs.append(target)
        ctx.log(
            f"processed {name}",
            entity_tag=kind,
            entity_route=target,
            entity_id=name,
            entity_type=kind,
        )
        ctx.progress(done / len(names), f"{done}/{len(names)} {kind} files")
    ctx.stats(items_processed=len(names), items_failed=0)
    return {"processed": len(names), "outputs": outputs, "output_directory": output_directory}


def _count(value: Any, what: str = "count") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise StepError(
            f"{what} must be a non-negative whole number, got {value!r}", retryable=False
        )
    return value


# ---------------------------------------------------------------------------------------------
# data_processing: real CSV work
# ---------------------------------------------------------------------------------------------


@plugin("csv_loader")
class CsvLoader:
    """Read CSV files (and write a sample one for the demo)."""

    def load_file(
        self, ctx: Any, file_path: str, delimiter: str = ",", has_header: bool = True
    ) -> dict[str, Any]:
        """Read a CSV file; output its path, row count, columns and a content-hash batch id."""
        header, rows = _read_csv(file_path, delimiter, has_header)
        with open(file_path, "rb") as fh:
            batch_id = "batch-" + hashlib.sha1(fh.read()).hexdigest()[:10]
        ctx.log(
            f"loaded {len(rows)} rows, {len(header)} columns from {file_path}",
            entity_tag="row_batch",
            entity_route=file_path,
            entity_id=batch_id,
        )
        ctx.stats(items_processed=len(rows))
        ctx.progress(1.0)
        return {"path": file_path, "rows": len(rows), "columns": header, "batch_id": batch_id}

    def generate(self, ctx: Any, file_path: str, rows: int = 200, seed: int = 1) -> dict[str, Any]:
        """Write a sample CSV (id, category, value1, value2) with duplicates and missing values."""
        rng = random.Random(seed)
        out: list[list[Any]] = []
        for i in range(_count(rows, "rows")):
            if out and rng.random() < 0.04:
                out.append(list(rng.choice(out)))  # an exact duplicate
                continue
            v1: Any = round(rng.uniform(0, 100), 2)
            v2: Any = rng.randint(1, 1000)
            if rng.random() < 0.06:
                v1 = ""
            if rng.random() < 0.04:
                v2 = ""
            out.append([i + 1, rng.choice(["alpha", "beta", "gamma", "delta"]), v1, v2])
        size = _write_csv(file_path, ["id", "category", "value1", "value2"], out)
        ctx.log(
            f"wrote sample CSV with {len(out)} rows", entity_tag="row_batch", entity_route=file_path
        )
        return {"path": file_path, "rows": len(out), "bytes": size}


@plugin("data_validator")
class DataValidator:
    """Check a CSV's columns and rows."""

    def validate_schema(
        self,
        ctx: Any,
        path: str,
        required_columns: list[str] | None = None,
        strict_mode: bool = True,
    ) -> dict[str, Any]:
        """Count invalid rows; in strict mode missing columns or ragged rows fail the step."""
        header, rows = _read_csv(path)
        missing = [c for c in (required_columns or []) if c not in header]
        ragged = sum(1 for r in rows if len(r) != len(header))
        with_missing = sum(1 for r in rows if len(r) == len(header) and "" in r)
        ctx.log(
            f"{len(rows)} rows: {ragged} malformed, {with_missing} with missing values",
            level="WARNING" if ragged or with_missing else "INFO",
            entity_tag="row_batch",
            entity_route=path,
        )
        ctx.stats(items_processed=len(rows), items_failed=ragged)
        if strict_mode and (missing or ragged):
            problems = ([f"missing columns {missing}"] if missing else []) + (
                [f"{ragged} rows with the wrong number of fields"] if ragged else []
            )
            raise StepError(f"{path} is invalid: " + "; ".join(problems), retryable=False)
        return {
            "path": path,
            "rows": len(rows),
            "columns": header,
            "missing_columns": missing,
            "invalid_rows": ragged,
            "rows_with_missing_values": with_missing,
            "valid_rows": len(rows) - ragged - with_missing,
        }

    def discard(self, ctx: Any, batch: str) -> dict[str, Any]:
        """Compensation: mark a loaded batch as discarded."""
        ctx.log(
            f"discarded batch {batch}", level="WARNING", entity_tag="row_batch", entity_id=batch
        )
        return {"discarded": batch}


@plugin("data_cleaner")
class DataCleaner:
    """Remove duplicates and handle missing values."""

    def clean_dataset(
        self,
        ctx: Any,
        path: str,
        output_path: str,
        remove_duplicates: bool = True,
        handle_missing: str = "drop",
    ) -> dict[str, Any]:
        """Write a cleaned copy: handle_missing is drop, interpolate or zero."""
        if handle_missing not in ("drop", "interpolate", "zero"):
            raise StepError(
                f"handle_missing must be drop, interpolate or zero, got {handle_missing!r}",
                retryable=False,
            )
        header, rows = _read_csv(path)
        rows_in = len(rows)
        rows = [r for r in rows if len(r) == len(header)]
        malformed = rows_in - len(rows)
        if remove_duplicates:
            rows = [list(r) for r in dict.fromkeys(map(tuple, rows))]  # keeps first occurrences
        duplicates = rows_in - malformed - len(rows)
        ctx.progress(0.5, "duplicates removed")
        _check_cancel(ctx)
        missing = sum(r.count("") for r in rows)
        if handle_missing == "drop":
            rows = [r for r in rows if "" not in r]
        else:
            numeric = _numeric_columns(header, rows)
            for col in range(len(header)):
                if col in numeric and handle_missing == "interpolate":
                    _interpolate(rows, col)
                for r in rows:
                    if r[col] == "":
                        r[col] = "0" if col in numeric else "unknown"
        _write_csv(output_path, header, rows)
        ctx.log(
            f"cleaned {rows_in} -> {len(rows)} rows ({duplicates} duplicates, {missing} "
            f"missing values {handle_missing})",
            entity_tag="row_batch",
            entity_route=output_path,
        )
        ctx.stats(items_processed=rows_in, items_failed=malformed)
        ctx.progress(1.0)
        return {
            "path": output_path,
            "rows_in": rows_in,
            "rows_out": len(rows),
            "duplicates_removed": duplicates,
            "missing_values": missing,
            "malformed_dropped": malformed,
            "handle_missing": handle_missing,
        }


@plugin("data_transformer")
class DataTransformer:
    """Normalize numeric columns and encode categorical ones."""

    def apply_transformations(
        self, ctx: Any, path: str, output_path: str, transformations: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply {"type": "normalize", "columns": [...]} / {"type": "encode", "column": ...}."""
        if not isinstance(transformations, list):
            raise StepError("transformations must be a list", retryable=False)
        header, rows = _read_csv(path)
        applied, encodings = [], {}
        for n, t in enumerate(transformations, 1):
            _check_cancel(ctx)
            kind = t.get("type") if isinstance(t, dict) else None
            if kind == "normalize":
                for name in t.get("columns") or []:
                    col = _column(header, name, path)
                    values = [_float(r[col]) for r in rows]
                    if any(v is None for v in values):
                        raise StepError(
                            f"column '{name}' is not numeric (clean the data first)",
                            retryable=False,
                        )
                    lo, hi = min(values, default=0.0), max(values, default=0.0)  # type: ignore[type-var]
                    for r, v in zip(rows, values, strict=True):
                        r[col] = f"{(v - lo) / (hi - lo) if hi > lo else 0.0:.6f}"  # type: ignore[operator]
                    applied.append(f"normalize:{name}")
            elif kind == "encode":
                col = _column(header, str(t.get("column")), path)
                codes = {c: i for i, c in enumerate(sorted({r[col] for r in rows}))}
                for r in rows:
                    r[col] = str(codes[r[col]])
                encodings[header[col]] = codes
                applied.append(f"encode:{header[col]}")
            else:
                raise StepError(
                    f"transformations[{n - 1}]: unknown type {kind!r} "
                    "(supported: normalize, encode)",
                    retryable=False,
                )
            ctx.progress(n / len(transformations))
        _write_csv(output_path, header, rows)
        ctx.log(
            f"applied {', '.join(applied) or 'nothing'}",
            entity_tag="row_batch",
            entity_route=output_path,
        )
        ctx.stats(items_processed=len(rows))
        return {"path": output_path, "rows": len(rows), "applied": applied, "encodings": encodings}


@plugin("csv_writer")
class CsvWriter:
    """Publish a CSV to its final place."""

    def save_file(
        self, ctx: Any, path: str, output_path: str, include_metadata: bool = True
    ) -> dict[str, Any]:
        """Copy the file to output_path (atomically), plus output_path.meta.json when asked."""
        header, rows = _read_csv(path)

        def copy(fh: Any) -> None:
            with open(path, newline="", encoding="utf-8") as src:
                shutil.copyfileobj(src, fh)

        size = _write_atomic(output_path, copy)
        meta_path = None
        if include_metadata:
            meta_path = output_path + ".meta.json"
            with open(output_path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
            meta = {
                "source": path,
                "rows": len(rows),
                "columns": header,
                "bytes": size,
                "sha256": digest,
                "run_id": ctx.run_id,
                "step_id": ctx.step_id,
            }
            _write_atomic(meta_path, lambda fh: json.dump(meta, fh, indent=2))
        ctx.log(
            f"saved {len(rows)} rows ({size} bytes)",
            entity_tag="row_batch",
            entity_route=output_path,
        )
        ctx.stats(items_processed=len(rows))
        return {"path": output_path, "rows": len(rows), "bytes": size, "metadata": meta_path}


# ---------------------------------------------------------------------------------------------
# parallel_media: simulated work with progress
# ---------------------------------------------------------------------------------------------


@plugin("image_processor")
class ImageProcessor:
    """Simulated image conversion."""

    def batch_process(
        self,
        ctx: Any,
        input_directory: str,
        output_directory: str,
        format: str = "jpg",
        quality: int = 85,
        count: int = 5,
        seconds: float = 0.5,
    ) -> dict[str, Any]:
        """'Convert' `count` images over `seconds`."""
        names = [f"image_{i:03d}.{format}" for i in range(1, _count(count) + 1)]
        return {
            **_simulate_batch(ctx, "image", output_directory, names, seconds),
            "quality": quality,
        }


@plugin("video_processor")
class VideoProcessor:
    """Simulated video transcoding."""

    def batch_process(
        self,
        ctx: Any,
        input_directory: str,
        output_directory: str,
        codec: str = "h264",
        bitrate: str = "2M",
        count: int = 3,
        seconds: float = 0.8,
    ) -> dict[str, Any]:
        """'Transcode' `count` videos over `seconds`."""
        names = [f"video_{i:03d}.{codec}.mp4" for i in range(1, _count(count) + 1)]
        return {
            **_simulate_batch(ctx, "video", output_directory, names, seconds),
            "bitrate": bitrate,
        }


@plugin("audio_processor")
class AudioProcessor:
    """Simulated audio encoding."""

    def batch_process(
        self,
        ctx: Any,
        input_directory: str,
        output_directory: str,
        format: str = "mp3",
        bitrate: str = "320k",
        count: int = 4,
        seconds: float = 0.4,
    ) -> dict[str, Any]:
        """'Encode' `count` audio files over `seconds`."""
        names = [f"audio_{i:03d}.{format}" for i in range(1, _count(count) + 1)]
        return {
            **_simulate_batch(ctx, "audio", output_directory, names, seconds),
            "bitrate": bitrate,
        }


def _outputs(value: Any) -> list[str]:
    if isinstance(value, dict):
        value = value.get("outputs", [])
    return [str(v) for v in value] if isinstance(value, list) else []


@plugin("manifest")
class Manifest:
    """Combine the outputs of the media steps."""

    def build(self, ctx: Any, images: Any, videos: Any, audio: Any) -> dict[str, Any]:
        """Each param is a batch_process output (or a list of names)."""
        groups = {"images": _outputs(images), "videos": _outputs(videos), "audio": _outputs(audio)}
        items = [name for names in groups.values() for name in names]
        ctx.log(f"manifest lists {len(items)} files", entity_tag="manifest")
        return {
            "manifest_id": "mf-" + _short_id(ctx.run_id, *items),
            "items": items,
            "counts": {k: len(v) for k, v in groups.items()},
            "total": len(items),
        }


MAX_FOUND = 10_000  # files media_finder.find lists at most


@plugin("media_finder")
class MediaFinder:
    """Find media files at run time, grouped by extension; total what the groups processed."""

    def find(self, ctx: Any, directory: str) -> dict[str, Any]:
        """The files directly in `directory`, one group per extension (groups and files sorted)."""
        if not isinstance(directory, str) or not os.path.isdir(directory):
            raise StepError(f"directory: {directory!r} is not a directory", retryable=False)
        groups: dict[str, list[str]] = {}
        for name in sorted(os.listdir(directory))[:MAX_FOUND]:
            if os.path.isfile(os.path.join(directory, name)) and not name.startswith("."):
                ext = os.path.splitext(name)[1].lstrip(".").lower() or "other"
                groups.setdefault(ext, []).append(name)
        total = sum(len(v) for v in groups.values())
        ctx.log(f"found {total} files in {len(groups)} groups in {directory}", entity_tag="media")
        return {
            "directory": directory,
            "groups": [
                {"group": g, "files": f, "count": len(f)} for g, f in sorted(groups.items())
            ],
            "total": total,
        }

    def summarise(self, ctx: Any, groups: Any) -> dict[str, Any]:
        """`groups`: the outputs of the per-group child runs (null for a group that failed)."""
        done = [g for g in groups if isinstance(g, dict)] if isinstance(groups, list) else []
        return {
            "groups": [str(g.get("group")) for g in done],
            "processed": sum(int(g.get("processed") or 0) for g in done),
            "failed": (len(groups) if isinstance(groups, list) else 0) - len(done),
        }


@plugin("archiver")
class Archiver:
    """Simulated packaging."""

    def archive(
        self, ctx: Any, manifest: Any, archive_name: str = "media_package.zip"
    ) -> dict[str, Any]:
        """'Pack' every item of a manifest (the output of manifest.build) into one archive."""
        items = manifest.get("items", []) if isinstance(manifest, dict) else _outputs(manifest)
        for done, item in enumerate(items, 1):
            _check_cancel(ctx)
            ctx.log(f"added {item}", level="DEBUG", entity_tag="archive", entity_route=archive_name)
            ctx.progress(done / len(items))
        ctx.stats(items_processed=len(items))
        return {"archive": archive_name, "items": len(items)}


# ---------------------------------------------------------------------------------------------
# conditional_analysis
# ---------------------------------------------------------------------------------------------

LARGE_ROWS = 1000


def _series(start: int, stop: int) -> list[int]:
    return [(i * 37) % 101 for i in range(start, stop)]  # a deterministic stand-in for a dataset


@plugin("data_inspector")
class DataInspector:
    """Classify a dataset by size."""

    def inspect(self, ctx: Any, rows: int) -> dict[str, Any]:
        """size is "large" from 1000 rows up, else "small"."""
        rows = _count(rows, "rows")
        size = "large" if rows >= LARGE_ROWS else "small"
        ctx.log(f"{rows} rows: taking the {size} path", entity_tag="dataset")
        return {"rows": rows, "size": size}


@plugin("small_processor")
class SmallProcessor:
    """Basic statistics in one pass."""

    def process(self, ctx: Any, rows: int) -> dict[str, Any]:
        """Mean, min and max of the dataset."""
        values = _series(0, _count(rows, "rows"))
        ctx.stats(items_processed=len(values))
        return {
            "algorithm": "basic_stats",
            "rows": len(values),
            "mean": round(sum(values) / len(values), 4) if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
        }


@plugin("large_processor")
class LargeProcessor:
    """Chunked statistics with progress."""

    def process(self, ctx: Any, rows: int, chunks: int = 4) -> dict[str, Any]:
        """Process the dataset in `chunks` parts, reporting progress after each."""
        rows, chunks = _count(rows, "rows"), max(1, _count(chunks, "chunks"))
        bounds = [rows * k // chunks for k in range(chunks + 1)]
        partials = []
        for k in range(chunks):
            _check_cancel(ctx)
            part = _series(bounds[k], bounds[k + 1])
            partials.append({"rows": len(part), "sum": sum(part)})
            time.sleep(0.05)
            ctx.log(
                f"chunk {k + 1}/{chunks}: {len(part)} rows",
                entity_tag="chunk",
                entity_id=str(k + 1),
            )
            ctx.progress((k + 1) / chunks)
        ctx.stats(items_processed=rows)
        total = sum(p["sum"] for p in partials)
        return {
            "algorithm": "chunked_stats",
            "rows": rows,
            "chunks": chunks,
            "mean": round(total / rows, 4) if rows else None,
            "partials": partials,
        }


@plugin("visualizer")
class Visualizer:
    """Simulated chart rendering."""

    def render(self, ctx: Any, kind: str, source: Any) -> dict[str, Any]:
        """Describe the chart of `kind` drawn from a processor's output."""
        rows = source.get("rows") if isinstance(source, dict) else None
        chart = f"{kind}-{_short_id(ctx.run_id, kind, rows)}.svg"
        ctx.log(f"rendered {chart}", entity_tag="chart", entity_route=chart)
        return {"chart": chart, "kind": kind, "rows": rows}


@plugin("report_generator")
class ReportGenerator:
    """Assemble a report from whatever sources were produced."""

    def generate(self, ctx: Any, **sources: Any) -> dict[str, Any]:
        """Any params; those that are null (e.g. from a skipped branch) are left out."""
        present = sorted(k for k, v in sources.items() if v is not None)
        ctx.log(f"report from {', '.join(present) or 'no sources'}", entity_tag="report")
        return {"report": f"analysis-{_short_id(ctx.run_id, *present)}.html", "sections": present}


# ---------------------------------------------------------------------------------------------
# transactional_update: a saga whose verification fails
# ---------------------------------------------------------------------------------------------


@plugin("deployment")
class Deployment:
    """Simulated release deployment."""

    def begin(self, ctx: Any, release: str) -> dict[str, Any]:
        """Open a change window for `release`."""
        tx = "tx-" + _short_id(ctx.run_id, release)
        ctx.log(f"change window {tx} opened for {release}", entity_tag="release", entity_id=release)
        return {"transaction_id": tx, "release": release}

    def deploy(self, ctx: Any, release: str) -> dict[str, Any]:
        """Roll `release` out to the hosts."""
        hosts = ["web-1", "web-2", "worker-1"]
        for done, host in enumerate(hosts, 1):
            _check_cancel(ctx)
            time.sleep(0.1)
            ctx.log(
                f"{release} deployed on {host}",
                entity_tag="host",
                entity_id=host,
                entity_route=release,
            )
            ctx.progress(done / len(hosts))
        return {
            "release": release,
            "deployment_id": "dep-" + _short_id(ctx.run_id, release),
            "hosts": hosts,
        }

    def rollback(self, ctx: Any, release: str) -> dict[str, Any]:
        """Compensation: take `release` off the hosts again."""
        ctx.log(f"rolled back {release}", level="WARNING", entity_tag="release", entity_id=release)
        return {"rolled_back": release}

    def commit(self, ctx: Any, transaction_id: str) -> dict[str, Any]:
        """Close the change window."""
        ctx.log(f"committed {transaction_id}", entity_tag="release")
        return {"committed": transaction_id}


@plugin("backup")
class Backup:
    """Simulated backups."""

    def create(self, ctx: Any, target: str) -> dict[str, Any]:
        """Back up `target`."""
        backup_id = "bk-" + _short_id(ctx.run_id, target)
        time.sleep(0.1)
        ctx.log(f"backed up {target} as {backup_id}", entity_tag="backup", entity_id=backup_id)
        return {"backup_id": backup_id, "target": target}

    def restore(self, ctx: Any, backup_id: str) -> dict[str, Any]:
        """Compensation: restore a backup made by create."""
        ctx.log(f"restored {backup_id}", level="WARNING", entity_tag="backup", entity_id=backup_id)
        return {"restored": backup_id}


@plugin("migration")
class Migration:
    """Simulated schema migrations."""

    def apply(self, ctx: Any, version: str) -> dict[str, Any]:
        """Migrate the schema to `version`."""
        ctx.log(f"schema migrated to {version}", entity_tag="schema", entity_id=str(version))
        return {"version": version, "applied": True}

    def revert(self, ctx: Any, version: str) -> dict[str, Any]:
        """Compensation: undo the migration to `version`."""
        ctx.log(f"schema migration {version} reverted", level="WARNING", entity_tag="schema")
        return {"reverted": version}


@plugin("verifier")
class Verifier:
    """Simulated post-deployment health check."""

    def verify(self, ctx: Any, release: str, expect_healthy: bool = True) -> dict[str, Any]:
        """Health-check `release`; expect_healthy=false simulates a failing service."""
        ctx.progress(0.5, "health check")
        if not expect_healthy:
            ctx.log(
                f"health check of {release} returned 503",
                level="ERROR",
                entity_tag="release",
                entity_id=release,
            )
            raise StepError(f"verification failed: health check returned 503 for {release}")
        return {"release": release, "healthy": True, "status_code": 200}


DEMO_PLUGINS: dict[str, type] = {
    cls.canvasflow_plugin_name: cls  # type: ignore[attr-defined,union-attr]
    for cls in (
        CsvLoader,
        DataValidator,
        DataCleaner,
        DataTransformer,
        CsvWriter,
        ImageProcessor,
        VideoProcessor,
        AudioProcessor,
        Manifest,
        Archiver,
        DataInspector,
        SmallProcessor,
        LargeProcessor,
        Visualizer,
        ReportGenerator,
        Deployment,
        Backup,
        Migration,
        Verifier,
    )
}
