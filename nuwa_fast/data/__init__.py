"""Training data: procedural landscapes, scikit-image photos, the user's own folder, and weighted
mixtures of them (see dataset.py)."""
from .dataset import ImageSource, LandscapeSource, MixtureSource, SkimageSource, make_source
from .folder import FolderSource, load_image
from .landscape import render_landscape, render_landscape_video
from .skimage_source import crop_resize, sample_skimage, skimage_images

__all__ = ["ImageSource", "LandscapeSource", "SkimageSource", "FolderSource", "MixtureSource",
           "make_source", "load_image", "render_landscape",
           "render_landscape_video", "crop_resize", "sample_skimage", "skimage_images"]
