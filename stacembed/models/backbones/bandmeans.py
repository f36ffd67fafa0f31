"""``band-means``: each chip's mean value per band, the baseline input a head is compared on.

It has no parameters: what a head learns from it is what the raw spectra of a chip tell, so
the same head trained on it shows what a backbone's embeddings add (``stacembed train``).
Pixels without data reach it as 0 after scaling (as every backbone sees them), so chips that
are partly empty have their means pulled toward 0, as their embeddings are by the same fill.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..card import ModelCard
from ..registry import register_architecture

ARCHITECTURE = "band-means"


class BandMeans(nn.Module):
    """``(batch, bands, height, width)`` -> ``(batch, bands)``: the mean over each chip."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


@register_architecture(ARCHITECTURE)
def band_means(card: ModelCard) -> BandMeans:
    return BandMeans()
