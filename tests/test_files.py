"""Tests for nsarm_core.data.files: collecting inputs, output paths, refusing to overwrite inputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from nsarm_core.data.files import collect_images, ensure_not_input, output_path_for
from nsarm_core.errors import InputError


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """photos/ with images at two depths, plus things that must be skipped."""
    root = tmp_path / "photos"
    _touch(
        root,
        "b.jpg",
        "a.PNG",
        "c.webp",
        "notes.txt",
        "sub/d.tif",
        "sub/deeper/e.bmp",
        ".hidden.png",
        ".cache/f.png",
        ".out.png.tmp-1a2b3c4d",
        "download.png.part",
        "backup.jpg~",
    )
    return root


def test_folder_recursive_sorted_and_filtered(tree: Path) -> None:
    found = collect_images([tree])
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "a.PNG",
        "b.jpg",
        "c.webp",
        "sub/d.tif",
        "sub/deeper/e.bmp",
    ]


def test_folder_not_recursive(tree: Path) -> None:
    assert [p.name for p in collect_images([tree], recursive=False)] == ["a.PNG", "b.jpg", "c.webp"]


def test_globs(tree: Path) -> None:
    assert [p.name for p in collect_images([str(tree / "*.jpg")])] == ["b.jpg"]
    assert [p.name for p in collect_images([str(tree / "**" / "*.tif")])] == ["d.tif"]
    # a folder matched by a pattern is expanded; a hidden file is never picked up by a pattern
    assert [p.name for p in collect_images([str(tree / "su*")])] == ["d.tif", "e.bmp"]
    assert [p.name for p in collect_images([str(tree / "*.PNG")])] == ["a.PNG"]  # not ".hidden.png"
    with pytest.raises(InputError, match=r"\*\.gif. matched no image"):
        collect_images([str(tree / "*.gif")])


def test_files_kept_in_order_and_deduplicated(tree: Path) -> None:
    inputs = [tree / "c.webp", str(tree / "sub" / ".." / "b.jpg"), tree, tree / "c.webp"]
    found = collect_images(inputs)
    assert [p.name for p in found] == ["c.webp", "b.jpg", "a.PNG", "d.tif", "e.bmp"]
    assert found[1] == Path(str(tree / "sub" / ".." / "b.jpg"))  # returned as given, not resolved


def test_errors_name_the_input(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not found.*missing\.png"):
        collect_images([tree / "b.jpg", tree / "missing.png"])
    with pytest.raises(InputError, match=r"notes\.txt.*suffix"):
        collect_images([tree / "notes.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no images found in folder.*empty"):
        collect_images([tmp_path / "empty"])


def test_output_path_mirrors_sub_folders(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    src = root / "a" / "b.jpg"
    assert output_path_for(src, root, out, suffix=".png", name_suffix="_x4") == out / "a" / "b_x4.png"
    assert output_path_for(src, root, out, suffix="png") == out / "a" / "b.png"
    assert output_path_for(src, root, out, suffix=None) == out / "a" / "b.jpg"
    assert output_path_for(src, None, out, suffix=None, name_suffix="_sr") == out / "b_sr.jpg"
    assert output_path_for(tmp_path / "elsewhere" / "c.tif", root, out, suffix=None) == out / "c.tif"
    relative = output_path_for(Path(os.path.relpath(src)), Path(os.path.relpath(root)), out, suffix=None)
    assert relative == out / "a" / "b.jpg"
    with pytest.raises(InputError, match="gif"):
        output_path_for(src, root, out, suffix=".gif")
    with pytest.raises(InputError, match="separator"):
        output_path_for(src, root, out, suffix=None, name_suffix="/x")


def test_ensure_not_input(tree: Path, tmp_path: Path) -> None:
    inputs = collect_images([tree])
    ensure_not_input(tmp_path / "out" / "b.jpg", inputs)  # different folder: fine
    with pytest.raises(InputError, match=r"would overwrite the input.*b\.jpg"):
        ensure_not_input(tree / "sub" / ".." / "b.jpg", inputs)
    link = tmp_path / "link.jpg"
    link.symlink_to(tree / "b.jpg")
    with pytest.raises(InputError, match="would overwrite"):
        ensure_not_input(link, inputs)
    hard = tmp_path / "hard.jpg"
    os.link(tree / "c.webp", hard)
    with pytest.raises(InputError, match="would overwrite"):
        ensure_not_input(hard, inputs)


def test_the_overwrite_refusal_names_the_option_that_avoids_it(tmp_path: Path) -> None:
    src = tmp_path / "a.png"
    src.write_bytes(b"x")
    with pytest.raises(InputError) as err:
        ensure_not_input(src, [src])
    assert "choose another output folder, or add a name suffix (nsarm upscale --suffix _x4)" in str(err.value)
    assert "suffix or name suffix" not in str(err.value)


def _png(path: Path) -> Path:
    from PIL import Image as PILImage

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (4, 4), (200, 10, 10)).save(path, format="PNG")
    return path


def test_folder_scans_take_images_by_content_and_name_every_skipped_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image as PILImage

    tree = tmp_path / "in"
    _png(tree / "a.png")
    _png(tree / "IMG_0001")  # a PNG saved without an extension
    _png(tree / "photo.dat")  # ... or with another one
    PILImage.new("P", (4, 4)).save(tree / "anim.gif")
    (tree / "notes.txt").write_text("not an image\n")
    _png(tree / ".hidden.png")
    _png(tree / ".cache" / "x.png")
    (tree / "gone.png").symlink_to(tree / "missing.png")  # dangling: taken, so that it fails by name
    with caplog.at_level(logging.INFO, logger="nsarm_core.data.files"):
        found = collect_images([tree], keep_broken_links=True)
    assert [p.name for p in found] == ["IMG_0001", "a.png", "gone.png", "photo.dat"]
    for name, reason in (
        ("anim.gif", "GIF is not supported"),
        ("notes.txt", "not an image this tool reads"),
        (".hidden.png", "hidden file"),
        (".cache", "hidden folder"),
    ):
        assert any(f"skipped '{tree / name}': {reason}" in r.getMessage() for r in caplog.records), name
    assert not any("x.png" in r.getMessage() for r in caplog.records)  # inside the hidden folder: named once
    assert any(r.levelno == logging.WARNING and "1 GIF file(s)" in r.getMessage() for r in caplog.records)
    assert [p.name for p in collect_images([tree / "IMG_0001"])] == ["IMG_0001"]  # given directly
    with pytest.raises(InputError, match="GIF is not supported"):
        collect_images([tree / "anim.gif"])
    for given in (tree / "gone.png", tree):  # outside a batch, a dangling link refuses the list, naming it
        with pytest.raises(
            InputError, match="gone.png' is a symbolic link to .*missing.png'?, which does not exist"
        ):
            collect_images([given])
    assert (
        output_path_for(tree / "IMG_0001", tree, tmp_path / "o", suffix=None)
        == tmp_path / "o" / "IMG_0001.png"
    )


def test_upscale_of_a_folder_with_unusual_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nsarm_cli.main import app

    tree = tmp_path / "in"
    _png(tree / "good.png")
    _png(tree / "IMG_0001")
    from PIL import Image as PILImage

    PILImage.new("P", (4, 4)).save(tree / "anim.gif")
    (tree / "gone.png").symlink_to(tree / "missing.png")
    res = CliRunner().invoke(
        app, ["-v", "upscale", str(tree), "-o", str(tmp_path / "o"), "--model", "bicubic"]
    )
    assert res.exit_code == 1, res.output
    assert (tmp_path / "o" / "good.png").is_file() and (tmp_path / "o" / "IMG_0001.png").is_file()
    text = " ".join(res.output.split())
    assert "anim.gif" in text and "GIF is not supported" in text
    assert text.count("1 GIF file(s)") == 1 and text.count("skipped '") == 1  # named once, not per scan
    assert "gone.png" in text and "which does not exist" in text
