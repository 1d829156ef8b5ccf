"""The public Python API, through its public names only: compress, open_archive, decode, read_archive."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pipeline_data.make import rgb, write_images
from typer.testing import CliRunner

import diffc_pipeline as dp
from diffc_pipeline.cli import app
from diffc_pipeline.errors import ArchiveError, DiffcError, InvalidInputError

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = {"threads": 1, "actors": 1}


@pytest.fixture(scope="module")
def archives(ray_cluster, tmp_path_factory) -> dict:
    """The same 5 images (four 16x16, one 12x20) as a Gaussian-model DiffC archive and as a WebP archive."""
    root = tmp_path_factory.mktemp("api")
    write_images(root / "in", 4)
    Image.fromarray(rgb(9, 12, 20)).save(root / "in" / "odd.png")
    dp.compress(str(root / "in"), str(root / "diffc"), model="gaussian", codec_options={"num_steps": 3}, **FAST)
    dp.compress(str(root / "in"), str(root / "webp"), codec="webp", codec_options={"quality": 60}, **FAST)
    return {"root": root, "diffc": str(root / "diffc"), "webp": str(root / "webp")}


def _cli_decode(archive: str, out: Path, *args: str) -> dict[str, np.ndarray]:
    result = CliRunner().invoke(app, ["decode", archive, str(out), *args, "--threads", "1", "--actors", "1"])
    assert result.exit_code == 0, result.output
    return {p.name: np.asarray(Image.open(p)) for p in out.glob("*.png")}


@pytest.mark.parametrize(("name", "step"), [("diffc", 2), ("diffc", 3), ("webp", 1)])
def test_read_archive_and_open_archive_give_the_cli_pixels(archives, tmp_path, name, step) -> None:
    want = _cli_decode(archives[name], tmp_path / "cli", "--step", str(step))
    assert len(want) == 5
    ds = dp.read_archive(archives[name], step=step, columns=("id", "image", "bpp", "step"), **FAST)
    got = {row["id"]: row for row in ds.iter_rows()}
    assert set(got) == set(want)
    for image_id, pixels in want.items():
        assert np.array_equal(got[image_id]["image"], pixels), image_id
        assert got[image_id]["step"] == step and got[image_id]["bpp"] > 0
    alone = dict(dp.open_archive(archives[name]).decode(step=step))  # this process, no Ray
    assert set(alone) == set(want) and all(np.array_equal(alone[k], want[k]) for k in want)


def test_open_archive_describes_the_archive(archives) -> None:
    arch = dp.open_archive(archives["diffc"])
    assert (arch.codec, arch.format_version, arch.model["spec"]) == ("diffc", 2, "gaussian")
    rows = arch.rows()
    assert rows.num_rows == 5 and {"id", "height", "width", "status", "cum_bits"} <= set(rows.column_names)
    assert all(len(bits) == 3 and bits == sorted(bits) for bits in rows.column("cum_bits").to_pylist())
    webp = dp.open_archive(archives["webp"])
    assert webp.codec == "webp" and webp.model is None and webp.manifest["codec"]["options"] == {"quality": 60}
    info = dp.inspect(archives["webp"])
    assert info["ok"] == 5 and info["codec"]["num_chunks"] == 1


def test_an_archive_made_with_the_photo_model_names_it_and_decodes_with_it(ray_cluster, tmp_path) -> None:
    """``model="photo"`` is recorded by name, so the archive decodes without naming its model again (in this
    process and through the CLI alike); the built-in model is refused for it."""
    write_images(tmp_path / "in", 2)
    dp.compress(str(tmp_path / "in"), str(tmp_path / "a"), model="photo", codec_options={"num_steps": 2}, **FAST)
    arch = dp.open_archive(str(tmp_path / "a"))
    assert (arch.model["spec"], arch.model["name"]) == ("photo", "diffc-unet-photos")
    alone = dict(arch.decode(step=2, recon_steps=2))
    cli = _cli_decode(str(tmp_path / "a"), tmp_path / "cli", "--step", "2", "--decode-opt", "recon_steps=2")
    assert set(alone) == set(cli) and all(np.array_equal(alone[k], cli[k]) for k in cli)
    with pytest.raises(DiffcError, match="diffc-unet-photos"):
        next(arch.decode(step=2, model="builtin"))


def test_decode_by_bpp_reads_the_longest_prefix_within_the_rate(archives) -> None:
    rows = {r["id"]: r for r in dp.open_archive(archives["diffc"]).rows().to_pylist()}
    target = max(r["cum_bits"][1] / (r["height"] * r["width"]) for r in rows.values())
    ds = dp.read_archive(archives["diffc"], bpp=target, columns=("id", "bpp", "step"), **FAST)
    for row in ds.iter_rows():
        assert row["bpp"] <= target + 1e-12 and row["step"] >= 2


def test_errors_name_the_problem(archives, tmp_path) -> None:
    with pytest.raises(DiffcError, match="cannot open nosuch://x"):
        dp.open_archive("nosuch://x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="holds no diffc archive"):
        dp.read_archive(str(tmp_path / "empty"))
    with pytest.raises(InvalidInputError, match="no decode option colour; valid decode options: method"):
        dp.read_archive(archives["diffc"], colour="red")
    with pytest.raises(InvalidInputError, match="unknown columns pixels"):
        dp.read_archive(archives["diffc"], columns=("id", "pixels"))
    with pytest.raises(DiffcError, match=r"--bpp 0.01 is below the first chunk of 5 of 5 selected images"):
        dp.read_archive(archives["diffc"], bpp=0.01)
    with pytest.raises(DiffcError, match="not progressive"):
        list(dp.open_archive(archives["webp"]).decode(step=0))
    with pytest.raises(InvalidInputError, match="codec 'webp' has no option qualty"):
        dp.compress(str(archives["root"] / "in"), str(tmp_path / "x"), codec="webp", codec_options={"qualty": 1})


def test_public_names_and_a_light_import() -> None:
    assert sorted(dp.__all__) == [
        "ArchiveReader", "__version__", "compress", "decode", "inspect", "open_archive", "read_archive",
    ]  # fmt: skip
    code = "import sys, diffc_pipeline; print(sorted(m for m in ('torch', 'ray', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_readme_example_runs_as_written(tmp_path) -> None:
    """The README's Python example, verbatim, in a fresh process (it compresses the bundled samples with the
    built-in model, so it takes a minute or two on 2 cores)."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "read_archive" in b)
    assert len(example.strip().splitlines()) <= 15
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"images at 0\.\d+ bpp, loss \d", result.stdout), result.stdout


def test_paths_are_accepted_and_wrong_types_are_named() -> None:
    from diffc_pipeline.pipeline.decode_job import DecodeTargetError

    fixture = Path(__file__).parent / "fixtures" / "format1" / "archive"
    reader = dp.open_archive(fixture)  # a pathlib.Path is its path
    assert reader.rows().num_rows == 4 and dp.inspect(fixture)["images"] == 4
    for bad, message in (
        ({"step": 2.5}, "step must be a whole number"),
        ({"step": True}, "step must be a whole number"),
        ({"bpp": "0.2"}, "bpp must be a number"),
        ({"ids": [5]}, "ids must be strings"),
    ):
        with pytest.raises(DecodeTargetError, match=message):
            list(reader.decode(**bad))
    with pytest.raises(InvalidInputError, match="must be a path or URL"):
        dp.open_archive(5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="columns is empty"):
        dp.read_archive(fixture, columns=())
