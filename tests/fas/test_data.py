"""Face anti-spoofing data: the frame-list loader, the synthetic domains, the video split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from osad.errors import DataError
from osad.fas.config import make_fas_config
from osad.fas.data import load_fas, load_frame_lists, split_by_video
from osad.fas.digits import DOMAINS, FRAMES_PER_VIDEO, render_domain
from osad.fas.frames import ATTACK, REAL

pytestmark = pytest.mark.usefixtures("single_thread")


def write_set(root: Path, name: str, videos_per_class: int = 2, frames: int = 2) -> Path:
    """A miniature set in the documented layout: frames/, depth/, real.txt, attack.txt."""
    folder = root / name
    (folder / "frames").mkdir(parents=True)
    (folder / "depth").mkdir()
    rng = np.random.default_rng(len(name))
    real, attack = ["# frame video depth"], []
    for v in range(videos_per_class):
        for f in range(frames):
            for kind, lines in (("real", real), ("attack", attack)):
                frame = f"frames/{kind}{v}_{f}.png"
                pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / frame)
                if kind == "real":
                    depth = f"depth/{kind}{v}_{f}.png"
                    # a bright blob on black: a face's depth map in miniature
                    blob = np.zeros((16, 16), dtype=np.uint8)
                    blob[4:12, 4:12] = 200
                    Image.fromarray(blob).save(folder / depth)
                    lines.append(f"{frame} {kind}{v} {depth}")
                else:
                    lines.append(f"{frame}   {kind}{v}")
    (folder / "real.txt").write_text("\n".join(real) + "\n\n")
    (folder / "attack.txt").write_text("\n".join(attack) + "\n")
    return folder


def test_frame_lists_are_read_with_depth_for_real_frames_only(tmp_path):
    write_set(tmp_path, "msu")
    frames = load_frame_lists(str(tmp_path), "msu", image_size=8, depth_size=4)
    assert frames.images.shape == (8, 3, 8, 8) and frames.images.dtype == torch.uint8
    assert frames.depth.shape == (8, 1, 4, 4)
    real = frames.labels == REAL
    assert real.sum() == 4 and (frames.labels == ATTACK).sum() == 4
    assert (frames.depth[~real] == 0).all()
    assert (frames.depth[real].flatten(1).amax(1) > 100).all()
    # the depth map keeps its shape: bright centre, dark border
    assert (frames.depth[real][:, 0, 1:3, 1:3] > 100).all()
    assert (frames.depth[real][:, 0, 0, 0] < 50).all()
    # two frames per video; real and attack videos never share an id
    assert len(frames.video_names) == 4
    assert torch.bincount(frames.videos).tolist() == [2, 2, 2, 2]
    for v in range(4):
        assert frames.labels[frames.videos == v].unique().numel() == 1


def test_frames_of_unknown_videos_stand_for_themselves(tmp_path):
    folder = write_set(tmp_path, "msu", videos_per_class=1, frames=1)
    with (folder / "attack.txt").open("a") as f:
        f.write("frames/real0_0.png -\nframes/attack0_0.png -\n")
    frames = load_frame_lists(str(tmp_path), "msu", image_size=8, depth_size=4)
    assert len(frames) == 4 and len(frames.video_names) == 4


def test_frames_are_resized_from_their_files(tmp_path):
    folder = write_set(tmp_path, "casia", videos_per_class=1, frames=1)
    frames = load_frame_lists(str(tmp_path), "casia", image_size=12, depth_size=16)
    image = Image.open(folder / "frames" / "real0_0.png")
    first = np.array(image.resize((12, 12), Image.Resampling.BILINEAR))
    assert torch.equal(frames.images[0], torch.from_numpy(first).permute(2, 0, 1))


def test_a_missing_set_says_how_to_obtain_and_lay_it_out(tmp_path):
    with pytest.raises(DataError) as info:
        load_frame_lists(str(tmp_path), "oulu", 8, 4)
    message = str(info.value)
    assert "\n" not in message
    assert "OULU-NPU not found" in message and "licensed" in message
    assert "University of Oulu" in message and "docs/anti-spoofing.md" in message


@pytest.mark.parametrize(
    "list_name,line,message",
    [
        ("real.txt", "frames/real0_0.png real0", "real.txt:1: expected 3 fields"),
        ("attack.txt", "frames/attack0_0.png attack0 depth/x.png", "attack.txt:1: expected 2"),
        ("attack.txt", "frames/nothing.png v", "attack.txt:1: file not found"),
    ],
)
def test_malformed_lists_name_the_line(tmp_path, list_name, line, message):
    folder = write_set(tmp_path, "idiap", videos_per_class=1, frames=1)
    (folder / list_name).write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        load_frame_lists(str(tmp_path), "idiap", 8, 4)


def test_protocol_on_frame_lists_splits_sources_by_video(tmp_path):
    for name in ("oulu", "casia", "idiap", "msu"):
        write_set(tmp_path, name, videos_per_class=4)
    config = make_fas_config(
        overrides=[
            "data.name=faces",
            f"data.root={tmp_path}",
            "data.sources=[oulu, casia, idiap]",
            "data.target=msu",
            "data.image_size=8",
            "data.val_fraction=0.25",
            "model.blocks=[[4]]",
        ]
    )
    data = load_fas(config.data, config.depth_size)
    assert [s.name for s in data.sources] == ["oulu", "casia", "idiap"]
    assert data.target_name == "msu" and len(data.target) == 16
    for source in data.sources:
        train_videos = set(source.train.videos.tolist())
        val_videos = set(source.val.videos.tolist())
        assert not train_videos & val_videos
        # one of four real and one of four attack videos, with both their frames
        assert len(source.val) == 4 and sorted(source.val.labels.tolist()) == [0, 0, 1, 1]


def test_synthetic_domain_is_deterministic_with_zero_depth_for_attacks():
    frames = render_domain("webcam", 16, 4)
    again = render_domain("webcam", 16, 4)
    assert torch.equal(frames.images, again.images) and torch.equal(frames.depth, again.depth)
    real = frames.labels == REAL
    assert real.float().mean() == 0.5
    assert (frames.depth[~real] == 0).all()
    assert (frames.depth[real].flatten(1).amax(1) > 0).all()
    assert torch.bincount(frames.videos).eq(FRAMES_PER_VIDEO).all()
    names = frames.video_names
    assert {n.split("/")[1] for n in names} == {"real", "print", "replay"}


def test_synthetic_domains_have_their_own_subjects_and_look_different():
    digits = {}
    means = {}
    for name in DOMAINS:
        frames = render_domain(name, 8, 2)
        digits[name] = {n.split("/")[2] for n in frames.video_names}
        means[name] = frames.images.float().mean((0, 2, 3))
    names = list(DOMAINS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not digits[a] & digits[b]
            assert (means[a] - means[b]).abs().max() > 3  # colour statistics differ


def test_split_by_video_is_seeded():
    frames = render_domain("studio", 8, 2)
    a_train, a_val = split_by_video(frames, 0.2, 5)
    b_train, b_val = split_by_video(frames, 0.2, 5)
    _, c_val = split_by_video(frames, 0.2, 6)
    assert torch.equal(a_val.videos, b_val.videos) and len(a_train) == len(b_train)
    assert not torch.equal(a_val.videos, c_val.videos)
    assert len(a_val) == pytest.approx(0.2 * len(frames), abs=FRAMES_PER_VIDEO * 2)
