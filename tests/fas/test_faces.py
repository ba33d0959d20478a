"""The embedded face domains (``data.name=lfw-faces``): real LFW crops, print and replay
attacks made by documented transformations, four capture domains, the depth template."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from osad.cli import main
from osad.errors import ConfigError, DataError
from osad.fas import faces
from osad.fas.config import make_fas_config
from osad.fas.data import load_fas
from osad.fas.digits import gaussian_blur
from osad.fas.faces import (
    DOMAINS,
    FRAMES_PER_VIDEO,
    KINDS,
    face_crops,
    face_depth_template,
    print_attack,
    render_domain,
    replay_attack,
    skin_tone,
    subjects,
)
from osad.fas.frames import ATTACK, REAL
from osad.fas.model import rgb_to_hsv
from osad.tasks import make_task_config

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[2]
PRESET = ROOT / "configs" / "fas-faces.yaml"
SIZE, DEPTH = 32, 8


@pytest.fixture(scope="module")
def rendered():
    return {name: render_domain(name, SIZE, DEPTH) for name in DOMAINS}


def _kinds(frames):
    return torch.tensor([KINDS.index(frames.video_names[v].split("/")[1]) for v in frames.videos])


def _crop_ids(frames):
    return {int(frames.video_names[v].split("/")[2]) for v in frames.videos.unique()}


def test_real_face_crops_load():
    crops = face_crops()
    assert crops.shape == (100, 1, 25, 25) and crops.dtype == torch.float32
    assert crops.min() >= 0 and crops.max() <= 1
    # photographs, not blanks: every crop has contrast, and no two crops are the same
    assert crops.flatten(1).std(1).min() > 0.05
    assert len({c.numpy().tobytes() for c in crops}) == 100


def test_a_domain_has_real_print_and_replay_videos(rendered):
    n = len(subjects("studio"))
    frames = rendered["studio"]
    assert n == 25 and len(frames) == 3 * n * FRAMES_PER_VIDEO
    assert frames.images.shape == (len(frames), 3, SIZE, SIZE)
    assert frames.images.dtype == torch.uint8 and frames.depth.dtype == torch.uint8
    assert frames.depth.shape == (len(frames), 1, DEPTH, DEPTH)
    kinds = _kinds(frames)
    for k, kind in enumerate(KINDS):
        assert int((kinds == k).sum()) == n * FRAMES_PER_VIDEO, kind
    assert torch.equal(frames.labels == REAL, kinds == KINDS.index("real"))
    assert set(frames.labels.tolist()) == {REAL, ATTACK}
    # every video's frames carry its label; frames of a video differ (pose, noise)
    for v in frames.videos.unique():
        in_video = frames.videos == v
        assert len(frames.labels[in_video].unique()) == 1
        assert not torch.equal(*frames.images[in_video][:2])


def test_subjects_partition_the_crops_and_no_crop_is_in_two_domains(rendered):
    parts = [set(subjects(name).tolist()) for name in DOMAINS]
    assert set().union(*parts) == set(range(100))
    assert sum(len(p) for p in parts) == 100
    for name, part in zip(DOMAINS, parts, strict=True):
        assert _crop_ids(rendered[name]) == part


@pytest.mark.parametrize("target", list(DOMAINS))
def test_no_face_in_both_training_and_test(target):
    sources = [name for name in DOMAINS if name != target]
    config = make_fas_config(
        PRESET, [f"data.sources=[{', '.join(sources)}]", f"data.target={target}"]
    )
    data = load_fas(config.data, config.depth_size)
    seen = set()
    for source in data.sources:
        seen |= _crop_ids(source.train) | _crop_ids(source.val)
    assert len(seen) == 75 and not seen & _crop_ids(data.target)


def test_the_four_domains_differ_measurably(rendered):
    """Cameras and light differ: the mean colour of the bona-fide frames of any two
    domains is at least 0.025 apart (measured: 0.030 to 0.127), and the domains' noise
    and blur give different mean absolute differences of neighbouring pixels (0.038 to
    0.047; pairs at least 0.0024 apart)."""
    colour, roughness = {}, {}
    for name, frames in rendered.items():
        real = frames.images[frames.labels == REAL].float() / 255
        colour[name] = real.mean((0, 2, 3))
        roughness[name] = (real[..., 1:, :] - real[..., :-1, :]).abs().mean()
    for a, b in itertools.combinations(DOMAINS, 2):
        assert (colour[a] - colour[b]).norm() > 0.025, (a, b)
        assert abs(roughness[a] - roughness[b]) > 0.0015, (a, b)


def _scene(n=6):
    gen = torch.Generator().manual_seed(1)
    gray = torch.nn.functional.interpolate(face_crops()[:n], size=SIZE, mode="bilinear")
    return skin_tone(gray, torch.rand(n, generator=gen))


def _chroma(images):
    return (images.max(1).values - images.min(1).values).mean()


def test_print_attack_reduces_gamut_and_contrast_and_adds_a_dot_screen():
    scene = _scene()
    printer = DOMAINS["webcam"].printer
    angle = torch.zeros(len(scene))
    flat = print_attack(scene, dataclasses.replace(printer, halftone_strength=0.0), 1.0, angle)
    # contrast: every value lies in the ink range times the paper tint
    low, high = printer.ink_range
    assert flat.min() >= low * min(printer.paper) - 1e-6
    assert flat.max() <= high * max(printer.paper) + 1e-6
    # gamut: on white paper, chroma is saturation * (ink range) times the blurred scene's
    white = dataclasses.replace(printer, halftone_strength=0.0, paper=(1.0, 1.0, 1.0))
    blurred = gaussian_blur(scene, torch.full((len(scene),), printer.blur))
    expected = printer.saturation * (high - low) * _chroma(blurred)
    assert _chroma(print_attack(scene, white, 1.0, angle)) == pytest.approx(
        float(expected), rel=0.05
    )
    # the halftone screen adds energy at its period: compare the spectra along x
    printed = print_attack(scene, printer, 1.0, angle)
    freq = round(SIZE / printer.halftone_period)

    def power(images):
        spectrum = torch.fft.rfft(images.mean(1) - images.mean((1, 2, 3))[:, None, None], dim=-1)
        return spectrum.abs()[..., freq - 1 : freq + 2].pow(2).sum()

    assert power(printed) > 5 * power(flat)


def test_replay_attack_is_blur_gamma_tint_and_moire():
    scene = _scene()
    screen = DOMAINS["phone"].screen
    angle, phase = torch.full((len(scene),), 0.3), torch.full((len(scene),), 1.1)
    plain = replay_attack(
        scene, dataclasses.replace(screen, moire_amplitude=0.0), 1.0, angle, phase
    )
    blurred = gaussian_blur(scene, torch.full((len(scene),), screen.blur))
    tint = torch.tensor(screen.tint)[None, :, None, None]
    assert torch.allclose(plain, blurred.clamp(0, 1) ** screen.gamma * tint, atol=1e-6)
    # moire: a multiplicative sinusoid of the documented frequency, shifted per channel
    replayed = replay_attack(scene, screen, 1.0, angle, phase)
    y, x = torch.meshgrid(torch.arange(float(SIZE)), torch.arange(float(SIZE)), indexing="ij")
    u = x * math.cos(0.3) + y * math.sin(0.3)
    shift = torch.arange(3)[:, None, None] * 2 * math.pi / 3
    wave = torch.sin(2 * math.pi * screen.moire_frequency * u + 1.1 + shift)
    assert torch.allclose(replayed, plain * (1 + screen.moire_amplitude * wave), atol=1e-5)
    assert not torch.allclose(replayed, plain, atol=0.02)


def test_prints_lose_saturation_and_replays_turn_blue(rendered):
    """In the rendered frames (after light and camera): prints lose saturation (the
    gamut; measured 0.57 to 0.79 of the bona-fide frames'), replays are bluer (every
    screen's backlight tint has B > R; mean B / mean R measured 1.04 to 1.41 times
    the bona-fide frames')."""
    for name, frames in rendered.items():
        images = frames.images.float() / 255
        kinds = _kinds(frames)
        real, printed, replayed = (images[kinds == KINDS.index(k)] for k in KINDS)
        assert rgb_to_hsv(printed)[:, 1].mean() < 0.85 * rgb_to_hsv(real)[:, 1].mean(), name

        def blue_over_red(x):
            return x[:, 2].mean() / x[:, 0].mean()

        assert blue_over_red(replayed) > 1.02 * blue_over_red(real), name


def test_depth_targets_are_the_face_template_for_real_frames_and_zero_for_attacks(rendered):
    template = face_depth_template(DEPTH)
    assert template.shape == (DEPTH, DEPTH)
    # an ellipsoid: near (1) at the centre, 0 in the corners, mirror-symmetric
    assert template[DEPTH // 2 - 1 : DEPTH // 2 + 1, DEPTH // 2 - 1 : DEPTH // 2 + 1].min() > 0.9
    assert template[0, 0] == 0 and template[-1, -1] == 0
    assert torch.equal(template, template.flip(0)) and torch.equal(template, template.flip(1))
    a, b = faces.DEPTH_AXES
    centre = (torch.arange(DEPTH) + 0.5) / DEPTH * 2 - 1
    assert template[DEPTH // 2, 0] == pytest.approx(
        math.sqrt(max(0.0, 1 - (centre[0] / a) ** 2 - (centre[DEPTH // 2] / b) ** 2))
    )
    for frames in rendered.values():
        real = frames.labels == REAL
        expected = template.mul(255).round().to(torch.uint8)
        assert torch.equal(frames.depth[real], expected.expand(int(real.sum()), 1, -1, -1))
        assert frames.depth[~real].max() == 0


def test_rendering_is_deterministic_and_scales(rendered):
    again = render_domain("cctv", SIZE, DEPTH)
    first = rendered["cctv"]
    for field in ("images", "labels", "depth", "videos"):
        assert torch.equal(getattr(first, field), getattr(again, field)), field
    assert first.video_names == again.video_names
    assert torch.equal(subjects("cctv"), subjects("cctv"))
    bigger = render_domain("cctv", 64, 16)
    assert bigger.images.shape[-1] == 64 and bigger.depth.shape[-1] == 16
    assert torch.equal(bigger.labels, first.labels)


def test_the_source_split_is_seeded():
    config = make_fas_config(PRESET)
    first, second = (load_fas(config.data, config.depth_size) for _ in range(2))
    for a, b in zip(first.sources, second.sources, strict=True):
        assert torch.equal(a.val.videos, b.val.videos)
        assert not set(a.train.videos.tolist()) & set(a.val.videos.tolist())
    other = make_fas_config(PRESET, ["data.partition_seed=1"])
    moved = load_fas(other.data, other.depth_size)
    assert any(
        not torch.equal(a.val.videos, b.val.videos)
        for a, b in zip(first.sources, moved.sources, strict=True)
    )


def test_the_preset_and_its_names():
    config = make_task_config(PRESET)
    assert config.data.name == "lfw-faces" and config.depth_size == DEPTH
    assert (config.data.sources, config.data.target) == (["studio", "webcam", "cctv"], "phone")
    with pytest.raises(ConfigError, match="did you mean 'lfw-faces'"):
        make_fas_config(overrides=["data.name=lfw-face"])
    with pytest.raises(ConfigError, match="unknown lfw-faces domain 'phon'"):
        make_fas_config(PRESET, ["data.target=phon"])


def test_missing_scikit_image_is_one_clear_error(monkeypatch):
    face_crops.cache_clear()
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    try:
        with pytest.raises(DataError, match="need scikit-image"):
            face_crops()
    finally:
        face_crops.cache_clear()


@pytest.mark.slow
def test_one_iteration_of_the_preset_trains_and_evaluates(tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--config", str(PRESET), "--out", str(out), "--no-progress"]
    assert main([*argv, "train.iterations=1", "train.eval_every=1"]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    phone = metrics["conditions"]["phone"]
    assert metrics["target"] == "phone" and phone["frame"]["count"] == 225
    assert phone["video"]["count"] == 75
