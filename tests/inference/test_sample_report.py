"""The embedded demo model's report on the plugin's own sample, read against the sample's truth.

The sample is what a newcomer opens first (File > Open Sample): an abdomen, portal venous phase, with
a liver mass, a left renal cyst and ascites. Its report goes through the real CLI on a raw-HU NIfTI
file, and the phantom finding reader turns the text back into findings.
"""

from __future__ import annotations

import json

import pytest

from napari_med3dvlm.cli import main
from napari_med3dvlm.io.nifti import write_nifti_volume
from napari_med3dvlm.phantoms._napari import SAMPLE_CASE, render_sample
from napari_med3dvlm.phantoms.findings import read_report, truth_findings

# slow: the embedded demo model generates a whole report on the CPU
pytestmark = pytest.mark.slow

#: Whether the embedded demo model reads the sample's lesions. While it does not, the test below is an
#: expected failure; strict, so the day a model that does is shipped, the marker must go.
DEMO_READS_THE_SAMPLE = False


@pytest.mark.xfail(not DEMO_READS_THE_SAMPLE, strict=True,
                   reason="the shipped demo model names a template lesion per region, not the sample's")
def test_the_sample_report_names_its_findings_and_nothing_false(tmp_path, config_dir):
    path = write_nifti_volume(render_sample().volume, tmp_path / "sample.nii.gz")
    out = tmp_path / "report"
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = json.loads((out / "report-01.json").read_text())["report"]
    read = read_report(text)
    assert (read.region, read.phase, read.plane) == ("abdomen", "portal venous", "axial"), text
    assert read.findings == truth_findings(SAMPLE_CASE), text
