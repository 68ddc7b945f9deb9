"""Training data: procedural landscapes, scikit-image photos, the user's own folder, and a resumable
sharded stream of samples over any mixture of them (see dataset.py)."""
from .dataset import (ImageSource, LandscapeSource, MixtureSource, PatchChainDataset, SkimageSource,
                      collate, make_source, to_pixels)
from .folder import FolderSource, load_image
from .landscape import render_landscape, render_landscape_video
from .skimage_source import crop_resize, sample_skimage, skimage_images

__all__ = ["ImageSource", "LandscapeSource", "SkimageSource", "FolderSource", "MixtureSource",
           "PatchChainDataset", "collate", "make_source", "to_pixels", "load_image", "render_landscape",
           "render_landscape_video", "crop_resize", "sample_skimage", "skimage_images"]
