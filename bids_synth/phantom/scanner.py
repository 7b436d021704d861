"""Another scanner's contrast: random intensity curves, bias fields, noise and blur.

What a model trained on one acquisition recipe meets on a new scanner (SynthSR, Billot et al.
2023: train on randomized contrasts so the network keys on anatomy). Used twice:

- ``generate_cohort(shift_contrast=True)`` / ``bids-synth-phantom --shift-contrast``: a held-out
  cohort whose sMRI and PET inputs look as if acquired elsewhere (the quality benchmark's
  shifted-contrast test);
- the diffusion trainer's input augmentation (``training.augment``), on conformed images.

The curve maps the image's intensities, normalized by their 99th percentile inside the object,
through a random piecewise-linear function: monotone (another weighting of the same contrast)
or not (a contrast inversion of some tissues, as between T1w and T2w). Zero voxels (background
of a skull-stripped image) stay zero.

>>> rng = np.random.default_rng(0)
>>> img = np.zeros((8, 8, 8), np.float32); img[2:6, 2:6, 2:6] = np.linspace(1, 2, 64).reshape(4, 4, 4)
>>> out = shift_contrast(img, rng)
>>> out.shape, bool((out[img == 0] == 0).all()), bool(np.isfinite(out).all())
((8, 8, 8), True, True)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ['shift_contrast', 'ContrastShift']


class ContrastShift:
    """One random draw of a scanner: curve, bias field, noise level and blur.

    Args:
        rng: the generator of the draw.
        strength: 0 keeps the image, 1 is the full range of the defaults.
        monotone_prob: probability that the curve keeps the order of intensities.
    """

    def __init__(self, rng: np.random.Generator, strength: float = 1.0,
                 monotone_prob: float = 0.5, n_points: int = 6) -> None:
        self.strength = float(strength)
        self.knots = np.linspace(0.0, 1.25, n_points)
        identity = self.knots.copy()
        if rng.uniform() < monotone_prob:
            steps = rng.gamma(2.0, 1.0, n_points - 1)
            curve = np.concatenate([[0.0], np.cumsum(steps)])
            curve *= 1.25 / curve[-1]
        else:
            curve = rng.uniform(0.1, 1.25, n_points)
            curve[0] = 0.0
        self.values = (1 - self.strength) * identity + self.strength * curve
        self.gain = float(np.exp(rng.normal(0.0, 0.2 * self.strength)))
        self.bias_coarse = rng.normal(0.0, 0.25 * self.strength, (4, 4, 4))
        self.noise = float(rng.uniform(0.0, 0.04 * self.strength))
        self.blur = float(rng.uniform(0.0, 1.0 * self.strength))
        self.noise_seed = int(rng.integers(2**31))

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """Apply to a 3D image, or to each volume of a 4D one (last axis) alike."""
        img = np.asarray(img, np.float32)
        if img.ndim == 4:
            return np.stack([self(img[..., i]) for i in range(img.shape[-1])], axis=-1)
        inside = img != 0
        if not inside.any():
            return img.copy()
        scale = float(np.percentile(np.abs(img[inside]), 99)) or 1.0
        u = np.clip(img / scale, 0.0, self.knots[-1])
        out = np.interp(u, self.knots, self.values).astype(np.float32)
        zoom = [s / c for s, c in zip(img.shape, self.bias_coarse.shape)]
        field = np.exp(ndimage.zoom(self.bias_coarse, zoom, order=3, mode='nearest'))
        out *= field[tuple(slice(0, s) for s in img.shape)].astype(np.float32)
        if self.blur > 0.05:
            out = ndimage.gaussian_filter(out, self.blur)
        if self.noise > 0:
            rng = np.random.default_rng(self.noise_seed)
            out += rng.normal(0.0, self.noise, out.shape).astype(np.float32)
        out = out * (scale * self.gain)
        out[~inside] = 0.0
        return out.astype(np.float32)


def shift_contrast(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                   monotone_prob: float = 0.5) -> np.ndarray:
    """``img`` as another scanner would give it (one :class:`ContrastShift` draw)."""
    return ContrastShift(rng, strength, monotone_prob)(img)
