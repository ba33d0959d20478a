"""Synthetic face anti-spoofing domains rendered from scikit-learn digits (embedded).

This is **not** face data. It is a stand-in that exercises the whole
anti-spoofing pipeline (domain split, meta-learning, depth regression, video
scores, thresholds) offline and in minutes, with the structure that makes the
real problem a domain-generalisation problem:

* Subjects: each domain gets its own quarter of the 1797 digits (like each
  public set has its own people), drawn in the domain's ink and paper colours.
* Real video: the digit under small pose changes, captured by the domain's
  camera. Its depth target is the posed digit (stroke = near, paper = far)
  pooled to the depth-map size.
* Attack video: the same digit re-rendered through a presentation medium, then
  captured by the same camera; depth target all zeros.

  - print: blur, compressed ink range, paper tint, halftone dot screen;
  - replay: screen gamma and tint, colour moire stripes, screen glare and, in
    the ``phone`` domain only, a dark bezel on some sides.

* Cameras differ per domain in contrast, brightness, gamma, white balance,
  saturation, blur, noise and lens distortion; the attack media differ per
  domain in halftone period, moire frequency and amplitude, ink range and bezel.
  A detector trained on three domains meets a new camera *and* new attack
  instruments in the fourth.

Everything is seeded by the domain's name, so a domain renders identically in
every protocol and every run (with the same torch build).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor

from osad.fas.frames import ATTACK, REAL, FasFrames

FRAMES_PER_VIDEO = 2
# Lengths below are in pixels of a 32x32 frame and scale with the frame size.
REFERENCE_SIZE = 32


@dataclass(frozen=True)
class Camera:
    contrast: float
    brightness: float
    gamma: float
    white_balance: tuple[float, float, float]
    saturation: float
    blur: float
    noise: float
    distortion: float  # radial: > 0 barrel, < 0 pincushion


@dataclass(frozen=True)
class Media:
    """The domain's print and replay instruments."""

    ink_range: tuple[float, float]
    halftone_period: float
    moire_frequency: float  # cycles per pixel
    moire_amplitude: float
    bezel: float  # bezel width in pixels (0: none)


@dataclass(frozen=True)
class Domain:
    ink: tuple[float, float, float]
    paper: tuple[float, float, float]
    camera: Camera
    media: Media


DOMAINS: dict[str, Domain] = {
    "studio": Domain(
        ink=(0.16, 0.12, 0.10),
        paper=(0.95, 0.95, 0.95),
        camera=Camera(1.0, 0.0, 1.0, (1.0, 1.0, 1.0), 1.0, 0.35, 0.012, 0.0),
        media=Media((0.15, 0.88), 2.5, 0.33, 0.12, 0.0),
    ),
    "webcam": Domain(
        ink=(0.08, 0.08, 0.08),
        paper=(0.92, 0.88, 0.78),
        camera=Camera(0.9, 0.03, 1.1, (1.08, 1.0, 0.88), 0.85, 0.7, 0.025, 0.12),
        media=Media((0.20, 0.85), 3.5, 0.22, 0.14, 0.0),
    ),
    "phone": Domain(
        ink=(0.55, 0.10, 0.10),
        paper=(0.85, 0.86, 0.88),
        camera=Camera(1.1, -0.02, 0.9, (0.92, 1.0, 1.1), 1.1, 0.5, 0.02, -0.1),
        media=Media((0.12, 0.80), 3.0, 0.27, 0.12, 3.5),
    ),
    "cctv": Domain(
        ink=(0.05, 0.25, 0.10),
        paper=(0.90, 0.90, 0.70),
        camera=Camera(0.8, 0.04, 1.15, (0.95, 1.06, 0.94), 0.55, 0.85, 0.035, 0.2),
        media=Media((0.22, 0.82), 4.0, 0.19, 0.13, 0.0),
    ),
}


def _domain_seed(name: str) -> int:
    return zlib.crc32(name.encode())


@functools.cache
def _digit_images() -> Tensor:
    """All 1797 digits as (N, 1, 8, 8) ink coverage in [0, 1]."""
    return torch.as_tensor(load_digits().images, dtype=torch.float32).div(16.0).unsqueeze(1)


def _subjects(name: str) -> Tensor:
    """The digits of domain ``name``: its quarter of a fixed permutation."""
    count = len(_digit_images())
    order = torch.randperm(count, generator=torch.Generator().manual_seed(0))
    return order.chunk(len(DOMAINS))[list(DOMAINS).index(name)]


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _pixel_grid(size: int) -> tuple[Tensor, Tensor]:
    coords = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(coords, coords, indexing="ij")


def _warp(images: Tensor, grid: Tensor, padding: str) -> Tensor:
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def pose(digits: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """8x8 digits -> ``size`` frames, each rotated (+-12 deg), scaled and shifted at random."""
    n = digits.shape[0]
    big = F.interpolate(digits, size=(size, size), mode="bilinear", align_corners=False)
    angle = _uniform(n, -12, 12, gen) * math.pi / 180
    scale = _uniform(n, 1.0, 1.18, gen)
    shift = torch.stack([_uniform(n, -0.08, 0.08, gen), _uniform(n, -0.08, 0.08, gen)], 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)
    theta = torch.cat([theta, shift[:, :, None]], 2)
    grid = F.affine_grid(theta, list(big.shape), align_corners=False)
    return _warp(big, grid, "zeros").clamp(0, 1)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image."""
    b, c, h, w = images.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(x[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, k)
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="replicate"),
        kernel[:, None, :, None],
        groups=b * c,
    )
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="replicate"),
        kernel[:, None, None, :],
        groups=b * c,
    )
    return flat.reshape(b, c, h, w)


def radial_distortion(images: Tensor, strength: float) -> Tensor:
    """Lens distortion ``r -> r (1 + k r^2)`` in normalised coordinates."""
    if strength == 0:
        return images
    size = images.shape[-1]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    factor = 1 + strength * (xx**2 + yy**2)
    grid = torch.stack([xx * factor, yy * factor], -1).expand(images.shape[0], -1, -1, -1)
    return _warp(images, grid, "border")


def _rotated_coordinate(size: int, angle: Tensor) -> tuple[Tensor, Tensor]:
    yy, xx = _pixel_grid(size)
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    return xx * cos + yy * sin, -xx * sin + yy * cos


def halftone(images: Tensor, period: float, angle: Tensor, strength: float = 0.6) -> Tensor:
    """Blend with an amplitude-modulated dot screen of ``period`` pixels at ``angle``."""
    u, v = _rotated_coordinate(images.shape[-1], angle)
    screen = 0.5 + 0.5 * torch.cos(2 * math.pi * u / period) * torch.cos(2 * math.pi * v / period)
    dots = torch.sigmoid((images - screen[:, None]) * 12)
    return (1 - strength) * images + strength * dots


def moire(
    images: Tensor, frequency: float, angle: Tensor, phase: Tensor, amplitude: float
) -> Tensor:
    """Multiplicative stripes, phase-shifted per colour channel (colour fringes)."""
    u, _ = _rotated_coordinate(images.shape[-1], angle)
    channel_shift = torch.arange(3, dtype=torch.float32)[None, :, None, None] * (2 * math.pi / 3)
    wave = torch.sin(
        2 * math.pi * frequency * u[:, None] + phase[:, None, None, None] + channel_shift
    )
    return images * (1 + amplitude * wave)


def glare(images: Tensor, centre: Tensor) -> Tensor:
    """A soft bright spot at ``centre`` (n, 2: row, column in pixels), a screen reflection."""
    size = images.shape[-1]
    yy, xx = _pixel_grid(size)
    dist2 = (yy[None] - centre[:, 0, None, None]) ** 2 + (xx[None] - centre[:, 1, None, None]) ** 2
    spot = 0.25 * torch.exp(-dist2 / (2 * (0.3 * size) ** 2))
    return images + spot[:, None]


def bezel(images: Tensor, width: float, sides: Tensor) -> Tensor:
    """Paint a dark screen border ``width`` pixels wide on the sides flagged in
    ``sides`` (n, 4: top, bottom, left, right)."""
    if width <= 0:
        return images
    size = images.shape[-1]
    yy, xx = _pixel_grid(size)
    edges = torch.stack([yy < width, yy >= size - width, xx < width, xx >= size - width])
    mask = (sides[:, :, None, None] & edges[None]).any(1)
    return torch.where(mask[:, None], torch.full_like(images, 0.05), images)


def colourise(coverage: Tensor, ink: Tensor, paper: Tensor) -> Tensor:
    """Ink coverage in [0, 1] -> RGB: ``paper (1 - g) + ink g`` with per-image colours."""
    return paper[:, :, None, None] * (1 - coverage) + ink[:, :, None, None] * coverage


@dataclass(frozen=True)
class Presentation:
    """How each attack video was made: the random part of its instrument, per frame."""

    angle: Tensor  # halftone screen or moire stripe angle (radians)
    phase: Tensor  # moire phase
    glare: Tensor  # (n, 2) glare centre in pixels
    sides: Tensor  # (n, 4) bool, bezel sides


def print_attack(images: Tensor, media: Media, scale: float, how: Presentation) -> Tensor:
    low, high = media.ink_range
    out = gaussian_blur(images, torch.full((images.shape[0],), 0.5 * scale))
    out = low + (high - low) * out
    out = out * torch.tensor([1.0, 0.97, 0.86])[None, :, None, None]
    return halftone(out, media.halftone_period * scale, how.angle)


def replay_attack(images: Tensor, media: Media, scale: float, how: Presentation) -> Tensor:
    out = images.clamp(0, 1) ** 0.8
    out = out * torch.tensor([0.92, 0.96, 1.08])[None, :, None, None]
    out = moire(out, media.moire_frequency / scale, how.angle, how.phase, media.moire_amplitude)
    out = glare(out, how.glare)
    return bezel(out, media.bezel * scale, how.sides)


def capture(
    images: Tensor, camera: Camera, scale: float, exposure: Tensor, gen: torch.Generator
) -> Tensor:
    """The domain's camera: lens, optics, colour response, exposure and sensor noise."""
    n = images.shape[0]
    out = radial_distortion(images.clamp(0, 1), camera.distortion)
    out = gaussian_blur(out, camera.blur * scale * _uniform(n, 0.8, 1.2, gen))
    out = out * torch.tensor(camera.white_balance)[None, :, None, None]
    grey = (out * torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]).sum(1, keepdim=True)
    out = grey + camera.saturation * (out - grey)
    out = (out - 0.5) * camera.contrast + 0.5 + camera.brightness + exposure[:, None, None, None]
    out = out.clamp(0, 1) ** camera.gamma
    out = out + camera.noise * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def _jittered(colour: tuple[float, float, float], n: int, gen: torch.Generator) -> Tensor:
    return (torch.tensor(colour) + 0.06 * (torch.rand(n, 3, generator=gen) - 0.5)).clamp(0, 1)


def render_domain(name: str, image_size: int, depth_size: int) -> FasFrames:
    """All frames of synthetic domain ``name``: per subject one real video and one
    attack video (print or replay, half each), ``FRAMES_PER_VIDEO`` frames each.
    Colours, exposure and the attack instrument are drawn per video; pose and
    sensor noise per frame."""
    domain = DOMAINS[name]
    gen = torch.Generator().manual_seed(_domain_seed(name))
    scale = image_size / REFERENCE_SIZE
    digits = _digit_images()
    subjects = _subjects(name)
    n = len(subjects)
    # Video v < n is the real video of subject v, video n + v its attack video.
    n_videos = 2 * n
    video_label = torch.cat([torch.full((n,), REAL), torch.full((n,), ATTACK)])
    video_print = torch.cat([torch.zeros(n, dtype=torch.bool), torch.rand(n, generator=gen) < 0.5])
    video_names = tuple(f"{name}/real/{int(s):04d}" for s in subjects) + tuple(
        f"{name}/{'print' if p else 'replay'}/{int(s):04d}"
        for s, p in zip(subjects, video_print[n:], strict=True)
    )
    per_video = Presentation(
        angle=_uniform(n_videos, 0, math.pi, gen),
        phase=_uniform(n_videos, 0, 2 * math.pi, gen),
        glare=image_size * torch.rand(n_videos, 2, generator=gen),
        sides=torch.rand(n_videos, 4, generator=gen) < 0.5,
    )
    ink, paper = _jittered(domain.ink, n_videos, gen), _jittered(domain.paper, n_videos, gen)
    exposure = _uniform(n_videos, -0.08, 0.08, gen)

    videos = torch.arange(n_videos).repeat_interleave(FRAMES_PER_VIDEO)
    labels = video_label[videos]
    coverage = pose(digits[torch.cat([subjects, subjects])[videos]], image_size, gen)
    scene = colourise(coverage, ink[videos], paper[videos])
    for is_print, present in ((True, print_attack), (False, replay_attack)):
        chosen = (labels == ATTACK) & (video_print[videos] == is_print)
        how = Presentation(*(t[videos[chosen]] for t in vars(per_video).values()))
        scene[chosen] = present(scene[chosen], domain.media, scale, how)
    frames = capture(scene, domain.camera, scale, exposure[videos], gen)

    depth = F.adaptive_avg_pool2d(coverage, depth_size) * (labels == REAL)[:, None, None, None]
    return FasFrames(
        images=frames.mul(255).round().to(torch.uint8),
        labels=labels,
        depth=depth.mul(255).round().to(torch.uint8),
        videos=videos,
        video_names=video_names,
    )
