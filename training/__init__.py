"""Training package for napari-med3dvlm: `python -m training.run STAGE --preset NAME`."""
