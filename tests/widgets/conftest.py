"""Docks against a real napari viewer (under Xvfb) and a tiny model saved to a temporary folder."""

import pytest


def open_sample(viewer):
    """The plugin's phantom CT sample (as a user opens it from File > Open Sample)."""
    layers = viewer.open_sample("napari-med3dvlm", "phantom_ct")
    return layers[0]


@pytest.fixture
def viewer_with_sample(make_napari_viewer, engine):
    viewer = make_napari_viewer()
    layer = open_sample(viewer)
    return viewer, layer
