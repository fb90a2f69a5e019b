"""Video files round-trip through the formats the CLI writes and reads."""
import numpy as np
import pytest
import torch

from vidgen.video_io import frames_to_tensor, read_video, tensor_to_frames, write_video


def moving_square(frames=5, h=24, w=30):
    video = np.full((frames, h, w, 3), 40, np.uint8)
    for f in range(frames):
        video[f, 4:12, 2 + 3 * f:10 + 3 * f] = (220, 60, 30)
    return video


@pytest.mark.parametrize("name", ["v.mp4", "v.gif", "frames"])
def test_write_then_read_keeps_frame_count_size_and_content(tmp_path, name):
    video = moving_square()
    path = write_video(str(tmp_path / name), video)
    back = read_video(path)
    assert back.shape == video.shape and back.dtype == np.uint8
    tol = 0 if name == "frames" else 40  # mp4 is lossy, gif quantises colours
    assert np.abs(back.astype(int) - video.astype(int)).mean() <= max(tol / 4, 0)
    assert back[2, 8, 13, 0] > 150  # the square moved to where it should be


def test_tensor_conversions_round_trip_and_resize():
    video = moving_square()
    x = frames_to_tensor(video)
    assert x.shape == (5, 3, 24, 30) and x.min() >= -1 and x.max() <= 1
    assert np.array_equal(tensor_to_frames(x), video)
    assert frames_to_tensor(video, size=(16, 16)).shape == (5, 3, 16, 16)


def test_unreadable_inputs_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_video(str(tmp_path / "missing.mp4"))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read"):
        read_video(str(tmp_path / "bad.mp4"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png"):
        read_video(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="frames"):
        write_video(str(tmp_path / "x.gif"), torch.zeros(2, 3, 4, 4).numpy())
