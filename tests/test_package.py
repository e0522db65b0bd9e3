import npe2

import napari_med3dvlm


def test_manifest_is_valid_and_registered():
    manifest = npe2.PluginManifest.from_distribution("napari-med3dvlm")
    assert manifest.name == "napari-med3dvlm"
    assert napari_med3dvlm.__version__
