"""A DICOM zip cut short: napari's reader claims it and says, in one line naming the file, that it is
a damaged archive (declining it left napari saying only that no reader opens it); the command line
says the same in one line with exit code 2."""

from __future__ import annotations

import zipfile

import npe2
import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.io import VolumeReadError
from napari_med3dvlm.io._napari import get_reader, read_layers

MESSAGE = "cut_ct.zip: damaged or truncated zip archive"


@pytest.fixture
def cut_zip(tmp_path, cranium_zip):
    data = cranium_zip.read_bytes()
    path = tmp_path / "cut_ct.zip"
    path.write_bytes(data[: len(data) // 2])
    assert not zipfile.is_zipfile(path)
    return path


def test_the_napari_reader_names_a_cut_zip(cut_zip):
    npe2.PluginManager.instance().discover()
    assert get_reader(str(cut_zip)) is read_layers
    with pytest.raises(VolumeReadError) as error:
        npe2.read([str(cut_zip)], stack=False, plugin_name="napari-med3dvlm")
    assert str(error.value).startswith(MESSAGE) and "\n" not in str(error.value)


def test_zips_without_dicom_are_still_left_to_other_readers(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "not an image")
    assert get_reader(str(path)) is None


def test_the_command_line_names_a_cut_zip_in_one_line(engine, cut_zip, tmp_path, capsys):
    assert main(["report", str(cut_zip), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {MESSAGE}"), lines
