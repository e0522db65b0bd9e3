"""napari-med3dvlm: the Med3DVLM 3D vision-language model in napari."""

__version__ = "0.1.0"
