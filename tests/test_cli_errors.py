"""What a user gets for plausible mistakes: one clear line naming the problem, nothing left behind, results on
stdout. Each case here came from a new user's walkthrough of the README (2026-12-03)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_data.make import write_images
from typer.testing import CliRunner

import diffc_pipeline as dp
from diffc_pipeline.cli import app
from diffc_pipeline.errors import ArchiveError, DiffcError, InvalidInputError

FIXTURE = Path(__file__).parent / "fixtures" / "format1" / "archive"
FAST = {"threads": 1, "actors": 1}


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_error_messages_keep_square_brackets_literally(tmp_path: Path) -> None:
    # Rich markup read "[/x]" as a closing tag and crashed the error handler; "[jxl]" vanished from hints
    result = _cli("compress", str(tmp_path), str(tmp_path / "out"), "--codec-opt", "[/x]")
    assert result.exit_code == 2, result.output
    assert "--codec-opt '[/x]': expected KEY=VALUE" in result.output and "Traceback" not in result.output
    missing = tmp_path / "shots [2024]"
    result = _cli("compress", str(missing), str(tmp_path / "out2"), "--codec", "webp")
    assert result.exit_code == 2 and "shots [2024]" in result.output, result.output


def test_inspect_prints_its_report_on_stdout() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "diffc_pipeline", "inspect", str(FIXTURE)], capture_output=True, text=True, check=True
    )
    assert "bits per pixel after each chunk" in done.stdout and "codec diffc" in done.stdout
    assert "bits per pixel" not in done.stderr  # `diffc inspect ARCHIVE > report.txt` gets the report


def test_decode_refuses_a_step_past_the_streams_and_a_bpp_not_above_zero() -> None:
    arch = dp.open_archive(str(FIXTURE))
    most = arch.manifest["codec"]["num_chunks"]
    outside = rf"--step \(step=\) must lie in 0\.\.{most} \(the archive's streams have {most} chunk"
    with pytest.raises(DiffcError, match=outside):
        next(arch.decode(step=most + 1))
    for bpp in (-1.0, 0.0, float("nan")):
        with pytest.raises(DiffcError, match=r"--bpp \(bpp=\) must be > 0"):
            next(arch.decode(bpp=bpp))


def test_compress_refuses_an_output_that_is_a_file_and_bad_numbers_before_any_work(tmp_path: Path) -> None:
    write_images(tmp_path / "in", 2)
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    with pytest.raises(ArchiveError, match=r"afile\.txt is a file"):
        dp.compress(str(tmp_path / "in"), str(afile), codec="webp", **FAST)
    assert afile.read_text() == "mine"
    for bad in ({"shard_size": 0}, {"batch_size": 0}, {"threads": -2}, {"max_pixels": 0}):
        name = next(iter(bad))
        with pytest.raises(InvalidInputError, match=f"{name} must be at least"):
            dp.compress(str(tmp_path / "in"), str(tmp_path / "x"), codec="webp", **{**FAST, **bad})
    assert not (tmp_path / "x").exists()
    result = _cli("compress", str(tmp_path / "in"), str(tmp_path / "y"), "--codec", "webp", "--max-pixels", "0")
    assert result.exit_code == 2 and "--max-pixels" in result.output


@pytest.mark.parametrize("make_input", ["missing", "empty"])
def test_a_run_that_fails_on_its_input_leaves_no_output_folder(tmp_path: Path, make_input: str) -> None:
    source = tmp_path / "in"
    if make_input == "empty":
        source.mkdir()
    with pytest.raises(DiffcError):
        dp.compress(str(source), str(tmp_path / "out"), codec="webp", **FAST)
    assert not (tmp_path / "out").exists()


def test_decode_refuses_to_write_into_the_archive_or_onto_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("mine")
    with pytest.raises(ArchiveError, match="is a file"):
        dp.decode(str(FIXTURE), str(afile), **FAST)
    for inside in (FIXTURE, FIXTURE / "decoded"):
        with pytest.raises(ArchiveError, match="lies inside the archive"):
            dp.decode(str(FIXTURE), str(inside), **FAST)
    assert not (FIXTURE / "decoded").exists()


def test_a_limited_trial_archive_grows_with_incremental_and_the_summary_counts_skipped_files(
    ray_cluster, tmp_path: Path
) -> None:
    write_images(tmp_path / "in", 5)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = str(tmp_path / "out")
    first = dp.compress(str(tmp_path / "in"), out, codec="webp", limit=2, **FAST)
    assert (first.images, first.skipped_non_image_files) == (2, 1)
    with pytest.raises(ArchiveError, match="add --incremental"):  # a plain rerun must plan the same shards
        dp.compress(str(tmp_path / "in"), out, codec="webp", **FAST)
    # a limited incremental run sees the first N of the listing: what lies past them is not "deleted"
    some = dp.compress(str(tmp_path / "in"), out, codec="webp", incremental=True, limit=1, **FAST)
    assert (some.new, some.unchanged, some.deleted) == (0, 1, 0)
    grown = dp.compress(str(tmp_path / "in"), out, codec="webp", incremental=True, **FAST)
    assert (grown.new, grown.unchanged, grown.images, grown.deleted) == (3, 2, 3, 0)
    assert dp.open_archive(out).rows().num_rows == 5
    # decoding into the input would overwrite its images (PNG names are their ids); Parquet parts never mix
    with pytest.raises(ArchiveError, match="lies inside the archive's input"):
        dp.decode(out, str(tmp_path / "in"), **FAST)
    with pytest.raises(ArchiveError, match="lies inside the archive's input"):
        dp.decode(out, str(tmp_path / "in" / "decoded"), format="parquet", **FAST)
    dp.decode(out, str(tmp_path / "parts"), format="parquet", **FAST)
    written = {p.name for p in (tmp_path / "parts").iterdir()}
    assert "_SUCCESS" in written and all(n.startswith("part-") for n in written - {"_SUCCESS"})  # no temporary
    with pytest.raises(ArchiveError, match="holds the parts of a whole earlier decode"):
        dp.decode(out, str(tmp_path / "parts"), format="parquet", ids=["img000.png"], **FAST)
    (tmp_path / "parts" / "_SUCCESS").unlink()  # as an interrupted decode leaves it
    with pytest.raises(ArchiveError, match=r"an interrupted \(no _SUCCESS\) earlier decode"):
        dp.decode(out, str(tmp_path / "parts"), format="parquet", ids=["img000.png"], **FAST)
    # a PNG decode never replaces files already there (an earlier decode at another rate, the user's own)
    pngs = tmp_path / "pngs"
    dp.decode(out, str(pngs), ids=["img000.png"], **FAST)
    before = (pngs / "img000.png").read_bytes()
    with pytest.raises(DiffcError, match=r"already holds 1 of the 2 PNG files .*img000\.png.*--overwrite"):
        dp.decode(out, str(pngs), ids=["img000.png", "img001.png"], step=1, **FAST)
    assert (pngs / "img000.png").read_bytes() == before and not (pngs / "img001.png").exists()
    dp.decode(out, str(pngs), ids=["img001.png"], **FAST)  # new names into the same folder: fine
    (pngs / "img000.png").write_bytes(b"a file of the user's")
    dp.decode(out, str(pngs), ids=["img000.png"], overwrite=True, **FAST)
    assert (pngs / "img000.png").read_bytes() == before


def test_resume_finishes_an_interrupted_png_decode_and_only_the_same_decode(ray_cluster, tmp_path: Path) -> None:
    """What a decode killed half-way leaves (whole PNGs of some ids, a temporary file of the one it was writing)
    is made from a whole decode; --resume decodes the rest into the same files a whole decode writes, and
    refuses a decode with other options, a folder no decode wrote, Parquet output and --overwrite with it."""
    write_images(tmp_path / "in", 4)
    arch = str(tmp_path / "arch")
    dp.compress(str(tmp_path / "in"), arch, codec="webp", **FAST)
    whole, out = tmp_path / "whole", tmp_path / "out"
    dp.decode(arch, str(whole), step=1, **FAST)
    dp.decode(arch, str(out), step=1, **FAST)
    names = sorted(p.name for p in whole.glob("*.png"))
    assert len(names) == 4 and (out / "_diffc_decode.json").is_file()
    for name in names[1:]:
        (out / name).unlink()
    (out / ".tmp-0123abcd").write_bytes(b"half a PNG")
    with pytest.raises(DiffcError, match=r"already holds 1 of the 4 PNG files .*--resume"):
        dp.decode(arch, str(out), step=1, **FAST)
    with pytest.raises(DiffcError, match=r"--resume: OUTPUT .* other options \(step 1 then, None now\)"):
        dp.decode(arch, str(out), resume=True, **FAST)
    with pytest.raises(DiffcError, match="pass one"):
        dp.decode(arch, str(out), step=1, resume=True, overwrite=True, **FAST)
    with pytest.raises(DiffcError, match="finishes an interrupted PNG decode"):
        dp.decode(arch, str(tmp_path / "parts"), step=1, format="parquet", resume=True, **FAST)
    (out / names[0]).write_bytes(b"the first image, as written")  # kept: a PNG that is there is done
    resumed = dp.decode(arch + "/", str(out), step=1, resume=True, **FAST)  # another spelling of the archive
    assert (resumed.images, resumed.already_written, resumed.failures) == (3, 1, 0)
    assert sorted(p.name for p in out.iterdir()) == ["_diffc_decode.json", *names]  # the temporary file is gone
    assert all((out / n).read_bytes() == (whole / n).read_bytes() for n in names[1:])
    again = dp.decode(arch, str(out), step=1, resume=True, **FAST)  # nothing left: no decoding, no error
    assert (again.images, again.already_written) == (0, 4)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / names[0]).write_bytes(b"mine")
    with pytest.raises(DiffcError, match=r"holds no record of an earlier decode \(_diffc_decode\.json\)"):
        dp.decode(arch, str(foreign), step=1, resume=True, **FAST)
    result = _cli("decode", arch, str(out), "--step", "1", "--resume", "--threads", "1", "--actors", "1")
    assert result.exit_code == 0 and "already written" in result.output, result.output
    # an --overwrite killed half-way leaves PNGs of the decode it replaced: not resumable until one finishes
    record = json.loads((out / "_diffc_decode.json").read_text())
    (out / "_diffc_decode.json").write_text(json.dumps({**record, "overwrite": True}))
    with pytest.raises(DiffcError, match="an --overwrite decode that did not finish"):
        dp.decode(arch, str(out), step=1, resume=True, **FAST)
    dp.decode(arch, str(out), step=1, overwrite=True, **FAST)  # a finished --overwrite is resumable again
    assert dp.decode(arch, str(out), step=1, resume=True, **FAST).already_written == 4
    # an incremental run since then: other versions, another --limit selection
    (tmp_path / "in" / "img000.png").write_bytes((tmp_path / "in" / "img001.png").read_bytes())
    os.utime(tmp_path / "in" / "img000.png", (1e9, 1e9))
    grown = tmp_path / "grown"
    shutil.copytree(arch, grown)
    dp.decode(str(grown), str(tmp_path / "g"), step=1, **FAST)
    dp.compress(str(tmp_path / "in"), str(grown), codec="webp", incremental=True, **FAST)
    with pytest.raises(DiffcError, match="archive_shards_sha256"):
        dp.decode(str(grown), str(tmp_path / "g"), step=1, resume=True, **FAST)


def test_an_incremental_run_reads_shards_another_tool_rewrote_with_large_string_ids(ray_cluster, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_images(tmp_path / "in", 3)
    arch = tmp_path / "arch"
    dp.compress(str(tmp_path / "in"), str(arch), codec="webp", incremental=True, **FAST)
    for shard in (arch / "shards").glob("*.parquet"):
        table = pq.read_table(shard)
        table = table.set_column(0, "id", table.column("id").cast(pa.large_string()))
        pq.write_table(table, shard)
    again = dp.compress(str(tmp_path / "in"), str(arch), codec="webp", incremental=True, **FAST)
    assert (again.new, again.changed, again.unchanged) == (0, 0, 3)


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    """A failed rename (a folder in the way, a full disk) leaves the old file and no temporary one."""
    import fsspec

    from diffc_pipeline.pipeline.commit import replace_file

    fs = fsspec.filesystem("file")
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    replace_file(fs, str(target), b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.png"]

    def no_rename(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fs, "mv", no_rename)
    with pytest.raises(OSError, match="No space"):
        replace_file(fs, str(target), b"newer")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_cli_ranges_refuse_negative_counts(tmp_path: Path) -> None:
    for args in (["--threads", "-2"], ["--limit", "-1"], ["--tile", "-5"]):
        result = _cli("eval", str(tmp_path), "--out", str(tmp_path / "e"), *args)
        assert result.exit_code == 2 and "Invalid value" in result.output, (args, result.output)


def test_progress_lines_say_dash_for_the_bpp_of_nothing_yet() -> None:
    import io

    from rich.console import Console

    from diffc_pipeline.pipeline.progress import JobProgress

    out = io.StringIO()
    progress = JobProgress("compress", Console(file=out, width=200))  # not a terminal: plain lines
    progress.start(4)
    progress.add(2, 0, 2 * 64 * 64, 2 * 64 * 64)
    progress.stop()
    first, last = out.getvalue().splitlines()[0], out.getvalue().splitlines()[-1]
    assert "0/4 images" in first and " - bpp" in first and "nan" not in first
    assert "2/4 images" in last and "1.000 bpp" in last


def test_compress_refuses_an_output_inside_its_input_folder(tmp_path: Path) -> None:
    # the first run used to work, and every rerun then listed the archive's own shards as input
    source = tmp_path / "in"
    write_images(source, 2)
    for given in (str(source), str(source / "*"), f"{source}/./"):
        with pytest.raises(ArchiveError, match=r"lies inside what INPUT .* lists"):
            dp.compress(given, str(source / "arch"), codec="webp", **FAST)
    assert sorted(p.name for p in source.iterdir()) == ["img000.png", "img001.png"]
    result = _cli("compress", str(source), str(source), "--codec", "webp")
    assert result.exit_code == 2 and "lies inside what INPUT" in result.output, result.output
    with pytest.raises(ArchiveError, match="lies inside what INPUT"):  # a dry run promises no such run
        dp.compress(str(source), str(source / "arch"), codec="webp", dry_run=True)
    # a glob that cannot match the archive's files lists the same images whatever lies beside them
    plan = dp.compress(str(source / "*.png"), str(source / "arch"), codec="webp", dry_run=True)
    assert plan["images"] == 2, plan


def test_a_where_filter_of_the_wrong_type_is_one_line_not_an_arrow_traceback(tmp_path: Path) -> None:
    for clause in ("width = '64'", "id > 3"):
        result = _cli("decode", str(FIXTURE), str(tmp_path / "out"), "--where", clause)
        assert result.exit_code == 2, result.output
        assert "does not fit the columns' types" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_api_decode_checks_its_batch_size() -> None:
    reader = dp.open_archive(str(FIXTURE))
    for bad in (0, -1):  # -1 used to yield nothing, silently; 0 raised a bare ValueError
        with pytest.raises(InvalidInputError, match="batch_size must be at least 1"):
            next(reader.decode(step=1, batch_size=bad))


def test_a_diffc_channel_setting_without_index_tables_is_refused_before_any_work(tmp_path: Path) -> None:
    # it used to start Ray and write an archive of nothing but "no index table" error rows
    write_images(tmp_path / "in", 1)
    result = _cli("compress", str(tmp_path / "in"), str(tmp_path / "out"), "--codec-opt", "target_gain=1.3")
    assert result.exit_code == 2, result.output
    assert "no index table for chunk_bits=12, candidate_log2=12, target_gain=1.3" in result.output
    assert "12,12,1.20" in result.output  # the settings that can be coded
    assert not (tmp_path / "out").exists()


def test_decode_to_png_refuses_ids_that_would_share_a_file(ray_cluster, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pipeline_data.make import png_bytes, rgb

    ids = ["a", "a.png", "b"]  # "a" is written as a.png: it used to overwrite the other one silently
    (tmp_path / "in").mkdir()
    table = pa.table({"id": ids, "image": [png_bytes(rgb(5 + i)) for i in range(3)]})
    pq.write_table(table, tmp_path / "in" / "data.parquet")
    archive = str(tmp_path / "arch")
    dp.compress(str(tmp_path / "in"), archive, codec="webp", **FAST)
    with pytest.raises(DiffcError, match=r"'a' and 'a.png' -> a.png.*--format parquet"):
        dp.decode(archive, str(tmp_path / "png"), **FAST)
    assert not (tmp_path / "png").exists()
    done = dp.decode(archive, str(tmp_path / "one"), ids=["a", "b"], **FAST)  # apart, they decode
    assert done.images == 2 and sorted(p.name for p in (tmp_path / "one").glob("*.png")) == ["a.png", "b.png"]


def test_an_incremental_run_names_a_damaged_shard_instead_of_an_arrow_traceback(ray_cluster, tmp_path: Path) -> None:
    write_images(tmp_path / "in", 2)
    archive = tmp_path / "arch"
    dp.compress(str(tmp_path / "in"), str(archive), codec="webp", incremental=True, **FAST)
    (shard,) = (archive / "shards").glob("*.parquet")
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short: the footer is gone
    result = _cli("compress", str(tmp_path / "in"), str(archive), "--codec", "webp", "--incremental")
    assert result.exit_code == 2, result.output
    assert f"{shard.name} is truncated or not Parquet" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_demo_refuses_prefixes_it_cannot_show(tmp_path: Path) -> None:
    for steps, why in (("x", "'x' is not a whole number"), ("0,40", "0 is outside 1..40"), ("10,41", "41 is outside")):
        result = _cli("demo", "--out", str(tmp_path / "d"), "--steps", steps)
        assert result.exit_code == 2 and why in result.output and "Traceback" not in result.output, result.output
    assert not (tmp_path / "d").exists()


def test_train_states_its_defaults_and_refuses_negative_numbers(tmp_path: Path) -> None:
    shown = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "300"}).output
    assert "(default: 64, or the checkpoint's)" in shown  # "[default: ...]" was eaten as Rich markup
    for args in (["--threads", "-1"], ["--batch-size", "0"], ["--crop", "-4"], ["--minutes", "-1"]):
        result = _cli("train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *args)
        assert result.exit_code == 2 and "Invalid value" in result.output, (args, result.output)
    assert not (tmp_path / "run").exists()


def test_inspect_survives_a_foreign_manifest_with_a_short_schedule(tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "archive"
    shutil.copytree(FIXTURE, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["codec"]["logsnrs"] = [0.0]  # fewer log-SNRs than the streams' chunks: indexing it crashed
    (copy / "manifest.json").write_text(json.dumps(manifest))
    report = dp.inspect(str(copy))
    assert report["bpp_per_chunk"] and all("logsnr" not in row for row in report["bpp_per_chunk"])


def test_decode_limit_counts_decodable_images_and_options_must_agree(ray_cluster, tmp_path: Path) -> None:
    source = tmp_path / "in"
    write_images(source, 2)
    (source / "a_broken.png").write_bytes(b"not an image")  # listed first: its error row came first too
    archive = str(tmp_path / "arch")
    dp.compress(str(source), archive, codec="webp", **FAST)
    done = dp.decode(archive, str(tmp_path / "one"), limit=1, **FAST)  # was: "no decodable image selected"
    assert done.images == 1 and [p.name for p in (tmp_path / "one").glob("*.png")] == ["img000.png"]
    assert done.skipped_error_rows == 1  # the error rows passed over on the way to the N-th decodable one
    reader = dp.open_archive(archive)
    assert [i for i, _ in reader.decode(limit=2)] == ["img000.png", "img001.png"]
    assert [i for i, _ in reader.decode(ids="img001.png")] == ["img001.png"]  # one id as a plain string
    result = _cli("decode", archive, str(tmp_path / "x"), "--method", "denoise", "--decode-opt", "method=flow")
    assert result.exit_code == 2 and "disagree" in result.output, result.output


def test_decode_options_refuse_nan_and_unbounded_work() -> None:
    from diffc_pipeline.codecs.diffc.codec import DiffcCodec

    options = {o.name: o for o in DiffcCodec.decode_options}
    with pytest.raises(InvalidInputError, match="recon_steps=1000000000 must be <= 4096"):
        options["recon_steps"].parse("1000000000")  # ran for minutes on one 64x64 image
    from diffc_pipeline.codecs.cdc.codec import CdcCodec

    options = {o.name: o for o in CdcCodec.decode_options}
    for name, value in (("temperature", "nan"), ("time_power", "inf")):  # nan decoded to an all-black "ok" image
        with pytest.raises(InvalidInputError, match="must be a finite number"):
            options[name].parse(value)
    for bad in ({"logsnr_end": "inf"}, {"logsnr_start": "nan"}, {"pool_width": "0"}, {"flow_steps": "0"}):
        with pytest.raises(InvalidInputError, match=f"{next(iter(bad))} must be in"):
            dp.compress("unused", "unused", codec_options=bad, dry_run=True)


def test_eval_refuses_an_out_that_is_a_file(tmp_path: Path) -> None:
    write_images(tmp_path / "in", 1)
    (tmp_path / "e.log").write_text("mine")
    result = _cli("eval", str(tmp_path / "in"), "--out", str(tmp_path / "e.log"), "--channels", "none")
    assert result.exit_code == 2 and "is a file" in result.output and "Traceback" not in result.output
    assert (tmp_path / "e.log").read_text() == "mine"


def _bmp(png: bytes) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, "BMP")
    return buf.getvalue()


def test_an_image_that_cannot_be_written_is_an_error_row_and_the_decode_goes_on(ray_cluster, tmp_path: Path) -> None:
    write_images(tmp_path / "in", 2)
    long_name = "a" * 251 + ".bmp"  # a legal file name; its decode, "<id>.png", is 259 bytes: too long
    (tmp_path / "in" / long_name).write_bytes(_bmp((tmp_path / "in" / "img001.png").read_bytes()))
    (tmp_path / "in" / "img001.png").unlink()
    dp.compress(str(tmp_path / "in"), str(tmp_path / "arch"), codec="webp", **FAST)
    summary = dp.decode(str(tmp_path / "arch"), str(tmp_path / "out"), **FAST)
    assert (summary.images, summary.failures) == (2, 1)
    assert summary.error_examples[0].startswith(f"{long_name}: write:")
    assert (tmp_path / "out" / "img000.png").is_file()


def test_an_interrupted_decode_says_its_output_is_incomplete(ray_cluster, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C in the middle of a decode (placed by replacing the drain, not raced with a timer): exit 130,
    "interrupted", and what OUTPUT now holds and how to decode again."""
    from diffc_pipeline.pipeline import decode_job

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(decode_job, "_drain", interrupted)
    for fmt, again in (("png", "with the same options and --resume"), ("parquet", "into an empty folder")):
        result = _cli("decode", str(FIXTURE), str(tmp_path / fmt), "--format", fmt, "--threads", "1")
        shown = " ".join(result.output.split())
        assert result.exit_code == 130 and "interrupted" in shown, result.output
        assert f"is incomplete (0 of {len(dp.open_archive(str(FIXTURE)).rows())} images decoded" in shown
        assert shown.endswith(f"decode again {again}")
