"""Face anti-spoofing domains made of real faces (embedded, no download).

The bona-fide subjects are the 100 real face crops (25x25, grayscale, from
Labeled Faces in the Wild) that scikit-image's wheel ships as
``skimage.data.lfw_subset()[:100]`` (its other 100 images are non-faces and are
not used). The attacks are made from the same crops by documented image
transformations; nothing here is a recording of a real attack.

* Subjects: each of the four capture domains gets its own quarter (25) of the
  100 crops, a fixed seeded permutation, so no crop is in two domains and a
  held-out target domain never shows a crop seen in training. LFW's subset does
  not record identities: two crops of one person may fall into two domains.
* Colour: the crops are grayscale, the network takes RGB (and computes HSV
  inside, :mod:`osad.fas.model`), so each subject's crop is tinted with a skin
  tone drawn between :data:`LIGHT_SKIN` and :data:`DARK_SKIN` (per-channel gains).
* Bona-fide video: the tinted face under small pose changes (rotation, zoom,
  shift, :func:`osad.fas.digits.pose`), under the domain's light, captured by
  the domain's camera. Depth target: the fixed face-shaped template
  :func:`face_depth_template` (an ellipsoid), the same for every real frame.
* Print video: :func:`print_attack` (blur, reduced gamut and contrast, paper
  tint, halftone dot screen), then the same light and camera. Depth: zeros.
* Replay video: :func:`replay_attack` (screen blur, gamma, screen tint, colour
  moire stripes), then the same light and camera. Depth: zeros.

The domains differ in the camera (contrast, brightness, gamma, white balance,
saturation, blur, noise, lens distortion; :class:`osad.fas.digits.Camera`), the
light (strength and direction of a brightness ramp) and the print and replay
instruments (:data:`DOMAINS`). Everything is seeded by the domain's name, so a
domain renders identically in every protocol and every run (with the same
torch build).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import torch
from torch import Tensor

from osad.errors import DataError
from osad.fas.digits import REFERENCE_SIZE, Camera, capture, gaussian_blur, halftone, moire, pose
from osad.fas.frames import ATTACK, REAL, FasFrames

FACES = 100  # the first 100 images of lfw_subset are faces
FRAMES_PER_VIDEO = 3
# Per-channel (R, G, B) gains applied to the grayscale crops; a subject's tone is
# drawn uniformly on the segment between them.
LIGHT_SKIN = (1.0, 0.87, 0.77)
DARK_SKIN = (0.78, 0.58, 0.45)
# Half axes of the depth ellipsoid, as fractions of half the frame (x: width, y: height).
DEPTH_AXES = (0.75, 0.95)
KINDS = ("real", "print", "replay")


@dataclass(frozen=True)
class PrintMedium:
    """A printer and its paper. Lengths in pixels of a 32x32 frame."""

    blur: float  # Gaussian sigma of the printer's dot spread
    saturation: float  # gamut: 1 keeps the colours, 0 prints gray
    ink_range: tuple[float, float]  # darkest and brightest printable value
    paper: tuple[float, float, float]  # paper tint (per-channel gain)
    halftone_period: float
    halftone_strength: float  # 0: no dot screen, 1: pure dots


@dataclass(frozen=True)
class Screen:
    """A replay display. Lengths in pixels of a 32x32 frame."""

    blur: float  # Gaussian sigma (screen resolution and focus)
    gamma: float  # display gamma applied to the shown image
    tint: tuple[float, float, float]  # backlight colour (per-channel gain)
    moire_frequency: float  # cycles per pixel
    moire_amplitude: float


@dataclass(frozen=True)
class Light:
    """A brightness ramp ``1 + strength * u`` across the frame, u in [-1, 1] along ``angle``."""

    strength: float
    angle: float  # degrees: 0 = brighter on the right, 90 = at the top


@dataclass(frozen=True)
class FaceDomain:
    camera: Camera
    light: Light
    printer: PrintMedium
    screen: Screen


DOMAINS: dict[str, FaceDomain] = {
    "studio": FaceDomain(
        camera=Camera(1.0, 0.0, 1.0, (1.0, 1.0, 1.0), 1.0, 0.35, 0.012, 0.0),
        light=Light(0.05, 90.0),
        printer=PrintMedium(0.5, 0.6, (0.12, 0.90), (1.0, 0.98, 0.92), 2.5, 0.35),
        screen=Screen(0.4, 0.80, (0.92, 0.96, 1.08), 0.33, 0.10),
    ),
    "webcam": FaceDomain(
        camera=Camera(0.9, 0.04, 1.1, (1.08, 1.0, 0.86), 0.85, 0.7, 0.025, 0.12),
        light=Light(0.20, 0.0),
        printer=PrintMedium(0.7, 0.5, (0.18, 0.86), (1.0, 0.96, 0.86), 3.5, 0.45),
        screen=Screen(0.6, 0.85, (0.95, 0.97, 1.05), 0.22, 0.14),
    ),
    "phone": FaceDomain(
        camera=Camera(1.1, -0.03, 0.85, (0.92, 1.0, 1.1), 1.1, 0.5, 0.02, -0.1),
        light=Light(0.15, 180.0),
        printer=PrintMedium(0.6, 0.7, (0.10, 0.82), (0.98, 0.98, 1.0), 3.0, 0.4),
        screen=Screen(0.5, 0.75, (0.90, 0.95, 1.10), 0.27, 0.12),
    ),
    "cctv": FaceDomain(
        camera=Camera(0.75, 0.05, 1.2, (0.95, 1.06, 0.94), 0.55, 0.85, 0.035, 0.2),
        light=Light(0.25, 45.0),
        printer=PrintMedium(0.8, 0.45, (0.20, 0.84), (1.0, 1.0, 0.88), 4.0, 0.45),
        screen=Screen(0.7, 0.90, (0.94, 1.0, 1.04), 0.19, 0.12),
    ),
}


@functools.cache
def face_crops() -> Tensor:
    """The 100 LFW face crops of scikit-image, (100, 1, 25, 25) float32 in [0, 1].

    Raises DataError if scikit-image (a dependency of osad) is missing."""
    try:
        from skimage.data import lfw_subset
        from skimage.util import img_as_float32
    except ImportError:
        raise DataError(
            "the embedded face domains need scikit-image (pip install scikit-image)"
        ) from None
    return torch.from_numpy(img_as_float32(lfw_subset()[:FACES]).copy()).unsqueeze(1)


def subjects(name: str) -> Tensor:
    """Indices (into :func:`face_crops`) of domain ``name``'s faces: its quarter of a
    fixed permutation (seed 0), disjoint from every other domain's."""
    order = torch.randperm(FACES, generator=torch.Generator().manual_seed(0))
    return order.chunk(len(DOMAINS))[list(DOMAINS).index(name)]


def _centred_grid(size: int) -> tuple[Tensor, Tensor]:
    """(y, x) of the pixel centres of a ``size`` x ``size`` frame, in (-1, 1)."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    return torch.meshgrid(coords, coords, indexing="ij")


def face_depth_template(size: int) -> Tensor:
    """The bona-fide depth target, (size, size) float32 in [0, 1]: an ellipsoid
    ``sqrt(max(0, 1 - (x / a)^2 - (y / b)^2))`` over pixel centres x, y in (-1, 1),
    half axes (a, b) = :data:`DEPTH_AXES` (near = 1, background = 0)."""
    y, x = _centred_grid(size)
    a, b = DEPTH_AXES
    return (1 - (x / a) ** 2 - (y / b) ** 2).clamp_min(0).sqrt()


def _gains(values: tuple[float, float, float]) -> Tensor:
    return torch.tensor(values)[None, :, None, None]


def _grey(images: Tensor) -> Tensor:
    return (images * _gains((0.299, 0.587, 0.114))).sum(1, keepdim=True)


def skin_tone(gray: Tensor, mix: Tensor) -> Tensor:
    """Grayscale (n, 1, H, W) -> RGB ``gray * tone`` with per-image skin tone
    ``LIGHT_SKIN + mix (DARK_SKIN - LIGHT_SKIN)``, ``mix`` (n,) in [0, 1]."""
    light, dark = torch.tensor(LIGHT_SKIN), torch.tensor(DARK_SKIN)
    tone = light + mix[:, None] * (dark - light)
    return gray * tone[:, :, None, None]


def print_attack(images: Tensor, printer: PrintMedium, scale: float, angle: Tensor) -> Tensor:
    """A print of RGB ``images`` in [0, 1]: blur, gamut reduced to ``saturation``,
    contrast compressed to ``ink_range``, paper tint, halftone screen at ``angle``
    (radians, one per image). Lengths are multiplied by ``scale`` (frame size / 32)."""
    out = gaussian_blur(images, torch.full((images.shape[0],), printer.blur * scale))
    grey = _grey(out)
    out = grey + printer.saturation * (out - grey)
    low, high = printer.ink_range
    out = (low + (high - low) * out.clamp(0, 1)) * _gains(printer.paper)
    return halftone(out, printer.halftone_period * scale, angle, printer.halftone_strength)


def replay_attack(
    images: Tensor, screen: Screen, scale: float, angle: Tensor, phase: Tensor
) -> Tensor:
    """A replay of RGB ``images`` in [0, 1] on ``screen``: blur, display gamma,
    backlight tint, colour moire stripes at ``angle`` and ``phase`` (radians, one
    per image)."""
    out = gaussian_blur(images, torch.full((images.shape[0],), screen.blur * scale))
    out = out.clamp(0, 1) ** screen.gamma * _gains(screen.tint)
    return moire(out, screen.moire_frequency / scale, angle, phase, screen.moire_amplitude)


def illuminate(images: Tensor, light: Light) -> Tensor:
    """Multiply by the brightness ramp ``1 + strength * u`` (u in [-1, 1] along the light)."""
    y, x = _centred_grid(images.shape[-1])
    theta = math.radians(light.angle)
    ramp = (x * math.cos(theta) - y * math.sin(theta)).clamp(-1, 1)
    return images * (1 + light.strength * ramp)


def render_domain(name: str, image_size: int, depth_size: int) -> FasFrames:
    """All frames of face domain ``name``: per subject one real, one print and one
    replay video of ``FRAMES_PER_VIDEO`` frames each, as uint8 (images (N, 3, S, S),
    depth (N, 1, d, d)). Skin tone, exposure and the instrument's screen angle and
    moire phase are drawn per video; pose and sensor noise per frame."""
    domain = DOMAINS[name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"faces/{name}".encode()))
    scale = image_size / REFERENCE_SIZE
    faces = subjects(name)
    n = len(faces)
    # Video k * n + s is subject s's video of kind KINDS[k].
    kind = torch.arange(len(KINDS)).repeat_interleave(n)
    n_videos = len(kind)
    video_names = tuple(
        f"{name}/{KINDS[k]}/{int(f):03d}" for k in range(len(KINDS)) for f in faces.tolist()
    )
    tone = torch.rand(n, generator=gen).repeat(len(KINDS))  # a subject's skin in all videos
    angle = math.pi * torch.rand(n_videos, generator=gen)
    phase = 2 * math.pi * torch.rand(n_videos, generator=gen)
    exposure = 0.12 * torch.rand(n_videos, generator=gen) - 0.06

    videos = torch.arange(n_videos).repeat_interleave(FRAMES_PER_VIDEO)
    frame_kind = kind[videos]
    gray = pose(face_crops()[faces.repeat(len(KINDS))[videos]], image_size, gen)
    scene = skin_tone(gray, tone[videos])
    printed, replayed = frame_kind == KINDS.index("print"), frame_kind == KINDS.index("replay")
    scene[printed] = print_attack(scene[printed], domain.printer, scale, angle[videos[printed]])
    scene[replayed] = replay_attack(
        scene[replayed], domain.screen, scale, angle[videos[replayed]], phase[videos[replayed]]
    )
    frames = capture(illuminate(scene, domain.light), domain.camera, scale, exposure[videos], gen)

    labels = torch.where(frame_kind == KINDS.index("real"), REAL, ATTACK)
    template = face_depth_template(depth_size)
    depth = template.expand(len(labels), 1, -1, -1) * (labels == REAL)[:, None, None, None]
    return FasFrames(
        images=frames.mul(255).round().to(torch.uint8),
        labels=labels,
        depth=depth.mul(255).round().to(torch.uint8),
        videos=videos,
        video_names=video_names,
    )
