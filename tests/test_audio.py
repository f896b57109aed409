"""Speech data and model: WAV reading, resampling, log-mel, cache, FSDD splits, augmentation."""

from __future__ import annotations

import math
import os
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from torchsmith.data import audio
from torchsmith.data.audio import (
    AudioAugment,
    AudioOptions,
    LogMel,
    SpectrogramBatches,
    fix_length,
    load_fsdd,
    load_wavfolder,
    log_mel,
    logmel_features,
    mel_frequencies,
    preprocess_files,
    read_wav,
    resample,
)
from torchsmith.data.bundle import MemorySource
from torchsmith.errors import UsageError
from torchsmith.models.audio import AudioCNN

SHORT = LogMel(duration_s=0.25)  # 2000 samples, 26 frames: keeps the suite fast


def write_wav(path: Path, values: np.ndarray, width: int = 2, rate: int = 8000, channels: int = 1) -> Path:
    dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[width]
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(np.asarray(values).astype(dtype).tobytes())
    return path


def tone(frequency: float, samples: int, rate: int = 8000, amplitude: float = 0.5) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(samples) / rate)


def peak_hz(signal: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(signal.double() * torch.hann_window(len(signal), dtype=torch.float64))
    return float(torch.argmax(spectrum.abs())) * rate / len(signal)


# ---------------------------------------------------------------- reading


def test_read_wav_16_bit_equals_what_was_written(tmp_path: Path) -> None:
    values = np.array([0, 1, -1, 32767, -32768, 1234, -4321])
    samples, rate = read_wav(write_wav(tmp_path / "a.wav", values, width=2, rate=11025))
    assert rate == 11025 and samples.dtype == torch.float32
    assert torch.equal(samples, torch.tensor(values / 32768.0, dtype=torch.float32))


def test_read_wav_8_and_32_bit_equal_what_was_written(tmp_path: Path) -> None:
    unsigned = np.array([128, 0, 255, 64, 200])  # 8-bit WAV is unsigned, 128 = silence
    samples, _ = read_wav(write_wav(tmp_path / "b.wav", unsigned, width=1))
    assert torch.equal(samples, torch.tensor((unsigned - 128) / 128.0, dtype=torch.float32))
    wide = np.array([0, 2**31 - 1, -(2**31), 2**20])
    samples, _ = read_wav(write_wav(tmp_path / "c.wav", wide, width=4))
    assert torch.allclose(samples, torch.tensor(wide / 2.0**31, dtype=torch.float32))


def test_read_wav_refuses_stereo_empty_and_non_wav_naming_the_file(
    tmp_path: Path,
) -> None:
    stereo = write_wav(tmp_path / "stereo.wav", np.zeros(20), channels=2)
    with pytest.raises(UsageError, match=r"stereo\.wav has 2 channels.*-ac 1"):
        read_wav(stereo)
    with pytest.raises(UsageError, match=r"empty\.wav is a zero-length recording"):
        read_wav(write_wav(tmp_path / "empty.wav", np.zeros(0)))
    fake = tmp_path / "notes.wav"
    fake.write_text("not audio at all")
    with pytest.raises(UsageError, match=r"notes\.wav is not a readable PCM WAV"):
        read_wav(fake)


# ---------------------------------------------------------------- signal processing


@pytest.mark.parametrize(("orig", "new", "frequency"), [(16000, 8000, 1000.0), (8000, 11025, 440.0)])
def test_resample_keeps_a_sines_frequency(orig: int, new: int, frequency: float) -> None:
    signal = torch.tensor(tone(frequency, orig, rate=orig), dtype=torch.float32)  # 1 s
    out = resample(signal, orig, new)
    assert out.shape == (new,)
    assert abs(peak_hz(out, new) - frequency) <= 1.0
    # the filter passes the tone at its full amplitude (away from the edges)
    assert abs(float(out[new // 4 : -new // 4].abs().max()) - 0.5) < 0.01


def test_resample_removes_what_the_new_rate_cannot_hold() -> None:
    signal = torch.tensor(tone(6000.0, 16000, rate=16000), dtype=torch.float32)
    out = resample(signal, 16000, 8000)  # 6 kHz is above the new Nyquist (4 kHz)
    assert float(out[2000:-2000].abs().max()) < 0.01  # linear interpolation would alias it to 2 kHz


def test_fix_length_pads_centred_and_crops_the_loudest_window() -> None:
    assert torch.equal(fix_length(torch.ones(3), 6), torch.tensor([0.0, 1, 1, 1, 0, 0]))
    quiet_then_loud = torch.cat([torch.full((50,), 0.01), torch.ones(10), torch.zeros(40)])
    cropped = fix_length(quiet_then_loud, 20)
    assert cropped.shape == (20,) and float(cropped.sum()) >= 10


def test_log_mel_shape_and_a_tone_lands_in_its_mel_band() -> None:
    settings = LogMel()
    waves = torch.tensor(np.stack([tone(500.0, 8000), tone(2000.0, 8000)]), dtype=torch.float32)
    features = log_mel(waves, settings)
    assert features.shape == (2, settings.n_mels, settings.frames) == (2, 40, 51)
    centres = mel_frequencies(settings)[1:-1]
    for row, frequency in zip(features, (500.0, 2000.0), strict=True):
        band = int(torch.argmax(row.mean(1)))
        assert abs(float(centres[band]) - frequency) <= float(centres[band + 1] - centres[band])


def test_log_mel_settings_are_validated() -> None:
    with pytest.raises(UsageError, match="f_max"):
        LogMel(f_max=6000.0)  # above Nyquist at 8 kHz
    with pytest.raises(UsageError, match="without any FFT bin"):
        audio.mel_filterbank(LogMel(n_mels=128, n_fft=64))


# ---------------------------------------------------------------- cache


def test_cache_hit_returns_identical_features_and_a_changed_file_recomputes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [write_wav(tmp_path / f"{i}.wav", 8000 * tone(300.0 * (i + 1), 1500)) for i in range(3)]
    first = logmel_features(paths, SHORT, tmp_path / "cache")
    assert first.dtype == torch.float16 and first.shape == (3, 40, SHORT.frames)
    with monkeypatch.context() as patch:
        patch.setattr(audio, "read_wav", lambda path: pytest.fail(f"cache miss read {path}"))
        assert torch.equal(logmel_features(paths, SHORT, tmp_path / "cache"), first)
    write_wav(paths[1], 8000 * tone(3000.0, 1500))
    os.utime(paths[1], ns=(1, 1))  # a new mtime even on filesystems with coarse clocks
    changed = logmel_features(paths, SHORT, tmp_path / "cache")
    assert torch.equal(changed[0], first[0]) and not torch.equal(changed[1], first[1])
    assert len(list((tmp_path / "cache" / "audio").glob("*.safetensors"))) == 2


# ---------------------------------------------------------------- datasets


@pytest.fixture
def fake_fsdd(tmp_path: Path) -> Path:
    folder = tmp_path / "fsdd" / "recordings"
    folder.mkdir(parents=True)
    for digit in range(10):
        for number, speaker in enumerate(("ann", "bob", "cy")):
            for take in range(8):  # every file a different tone (a different "voice")
                values = 8000 * tone(200.0 + 150 * digit + 50 * number + 5 * take, 1200)
                write_wav(folder / f"{digit}_{speaker}_{take}.wav", values)
    return tmp_path / "fsdd"


def labels_of(source: SpectrogramBatches) -> torch.Tensor:
    return source.get_batch(torch.arange(len(source)), None, train=False)[1]


def test_fsdd_standard_split_tests_takes_0_to_4(fake_fsdd: Path, tmp_path: Path) -> None:
    options = AudioOptions(features=SHORT, val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    bundle = load_fsdd(fake_fsdd, "standard", options)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (72, 18, 150)
    assert isinstance(bundle.train, MemorySource)
    assert bundle.info.modality == "audio" and bundle.info.class_names == [str(d) for d in range(10)]
    assert bundle.info.input_shape == (1, 40, SHORT.frames)
    assert bundle.info.preprocessing["kind"] == "logmel"
    assert bundle.info.preprocessing["normalize"] == "recording"
    assert torch.equal(labels_of(bundle.test).bincount(), torch.full((10,), 15))
    # take 0 of "0_ann" is a test file: its features sit in the test split, not train
    test_file = fake_fsdd / "recordings" / "0_ann_0.wav"
    expected = preprocess_files([test_file], bundle.info.preprocessing)
    test_x, _ = bundle.test.get_batch(torch.arange(len(bundle.test)), None, train=False)
    train_x, _ = bundle.train.get_batch(torch.arange(len(bundle.train)), None, train=False)
    assert any(torch.allclose(x, expected[0], atol=1e-5) for x in test_x)
    assert not any(torch.allclose(x, expected[0], atol=1e-5) for x in train_x)


def test_fsdd_speaker_split_holds_the_speaker_out_entirely(fake_fsdd: Path, tmp_path: Path) -> None:
    options = AudioOptions(features=SHORT, cache_dir=str(tmp_path / "cache"))
    bundle = load_fsdd(fake_fsdd / "recordings", "speaker:bob", options)
    assert len(bundle.test) == 80 and len(bundle.train) + len(bundle.val) == 160
    bob = preprocess_files(
        sorted((fake_fsdd / "recordings").glob("*_bob_*.wav")),
        bundle.info.preprocessing,
    )
    for source in (bundle.train, bundle.val):
        x, _ = source.get_batch(torch.arange(len(source)), None, train=False)
        distance = torch.cdist(x.flatten(1), bob.flatten(1))  # (train, bob)
        assert float(distance.min()) > 1e-3  # no recording of bob outside the test split
    with pytest.raises(UsageError, match="unknown speaker 'zed'; the speakers are: ann, bob, cy"):
        load_fsdd(fake_fsdd, "speaker:zed", options)
    with pytest.raises(UsageError, match="'standard' or 'speaker:NAME'"):
        load_fsdd(fake_fsdd, "random", options)


def test_fsdd_dataset_normalisation_travels_in_the_preprocessing(fake_fsdd: Path, tmp_path: Path) -> None:
    options = AudioOptions(features=SHORT, normalize="dataset", cache_dir=str(tmp_path / "c"))
    bundle = load_fsdd(fake_fsdd, "standard", options)
    stats = bundle.info.preprocessing["normalize"]
    x, _ = bundle.train.get_batch(torch.arange(len(bundle.train)), None, train=False)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3 and stats["std"] > 0


def test_wavfolder_tree_and_pattern(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("test", 2)):
        for word, frequency in (("no", 300.0), ("yes", 900.0)):
            (tmp_path / "tree" / split / word).mkdir(parents=True)
            (tmp_path / "named").mkdir(exist_ok=True)
            for i in range(count):
                write_wav(
                    tmp_path / "tree" / split / word / f"{i}.wav",
                    8000 * tone(frequency, 900),
                )
                write_wav(
                    tmp_path / "named" / f"{word}_s{i % 2}_{split}{i}.wav",
                    8000 * tone(frequency, 900),
                )
    options = AudioOptions(features=SHORT, val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    tree = load_wavfolder(tmp_path / "tree", options=options)
    assert tree.info.class_names == ["no", "yes"]
    assert (len(tree.train), len(tree.val), len(tree.test)) == (9, 3, 4)
    pattern = r"(?P<label>[a-z]+)_(?P<speaker>s\d)_\w+\.wav"
    named = load_wavfolder(tmp_path / "named", pattern, "speaker:s1", options)
    assert len(named.test) == 8 and len(named.train) + len(named.val) == 8
    with pytest.raises(UsageError, match="do not match"):
        load_wavfolder(tmp_path / "named", r"(?P<label>yes)_.*\.wav", options=options)
    with pytest.raises(UsageError, match=r"needs a named group \(\?P<label>"):
        load_wavfolder(tmp_path / "named", r".*\.wav", options=options)


# ---------------------------------------------------------------- augmentation


def chirp_features(batch: int = 8) -> torch.Tensor:
    """The same clip `batch` times: a rising tone in the middle, silence around it."""
    wave_ = torch.zeros(8000)
    time = torch.arange(3000) / 8000
    wave_[2500:5500] = 0.5 * torch.sin(2 * math.pi * (300 * time + 400 * time**2))
    return log_mel(wave_[None], LogMel()).half().repeat(batch, 1, 1)  # (B, 40, 51)


def test_augmentation_is_reproducible_and_differs_per_sample() -> None:
    features = chirp_features()
    source = SpectrogramBatches(features, torch.zeros(8, dtype=torch.long), LogMel(),
                                AudioAugment(shift=0.2, tempo=0.1, warp=0.1))  # fmt: skip
    indices = torch.arange(8)
    first, _ = source.get_batch(indices, torch.Generator().manual_seed(3), train=True)
    again, _ = source.get_batch(indices, torch.Generator().manual_seed(3), train=True)
    other, _ = source.get_batch(indices, torch.Generator().manual_seed(4), train=True)
    assert first.shape == (8, 1, 40, 51) and torch.equal(first, again)
    assert not torch.equal(first, other)
    assert all(not torch.allclose(first[0], first[i]) for i in range(1, 8))
    plain, _ = source.get_batch(indices, torch.Generator().manual_seed(3), train=False)
    assert torch.equal(plain[0], plain[7])  # no augmentation outside training


def test_time_shift_moves_whole_frames_and_fills_with_silence() -> None:
    features = chirp_features().float()
    augment = AudioAugment(shift=0.2, tempo=0.0, warp=0.0, time_masks=0, freq_masks=0)
    moved = audio.warp_spectrograms(features, LogMel(), augment, torch.Generator().manual_seed(0))
    floor = features.amin()
    shifts = []
    for sample in moved:
        for shift in range(-20, 21):
            expected = torch.roll(features[0], shift, dims=1)
            if shift > 0:
                expected[:, :shift] = floor
            elif shift < 0:
                expected[:, shift:] = floor
            if torch.allclose(sample, expected, atol=1e-3):
                shifts.append(shift)
                break
        else:
            pytest.fail("a sample is not a whole-frame shift of the input")
    assert len(set(shifts)) > 3


def test_frequency_warp_moves_a_tone_by_at_most_the_warp_factor() -> None:
    settings = LogMel()
    steady = torch.tensor(tone(1000.0, 8000), dtype=torch.float32)[None]
    features = log_mel(steady, settings).repeat(16, 1, 1)  # (16, 40, 51)
    augment = AudioAugment(shift=0.0, tempo=0.0, warp=0.2)
    warped = audio.warp_spectrograms(features, settings, augment, torch.Generator().manual_seed(0))
    centres = mel_frequencies(settings)[1:-1]
    peaks = centres[warped.mean(2).argmax(1)]  # (16,) Hz of the loudest band per sample
    spacing = float(centres[20] - centres[19])  # band spacing near 1 kHz
    assert float(peaks.min()) >= 800 - spacing and float(peaks.max()) <= 1200 + spacing
    assert float(peaks.min()) < 1000 - spacing / 2 < 1000 + spacing / 2 < float(peaks.max())


def test_masks_zero_at_most_the_configured_bands_and_frames() -> None:
    augment = AudioAugment(shift=0.0, time_masks=2, time_mask_width=10, freq_masks=1, freq_mask_width=5)
    source = SpectrogramBatches(chirp_features(), torch.zeros(8, dtype=torch.long), LogMel(), augment)
    x, _ = source.get_batch(torch.arange(8), torch.Generator().manual_seed(1), train=True)
    x = x[:, 0]  # (B, 40, 51)
    masked_bands = (x == 0).all(2).sum(1)  # (B,)
    masked_frames = (x == 0).all(1).sum(1)
    assert int(masked_bands.max()) <= 5 and int(masked_frames.max()) <= 20
    assert int(masked_frames.sum()) > 0 and len(set(masked_frames.tolist())) > 1


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("shape", [(40, 101), (64, 51), (3, 5), (1, 1)])
def test_audio_cnn_output_shape_for_any_input_size(shape: tuple[int, int]) -> None:
    model = AudioCNN(num_classes=10, width=8).eval()
    assert model(torch.randn(2, 1, *shape)).shape == (2, 10)


def test_audio_cnn_learns_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = AudioCNN(num_classes=4, width=8, dropout=0.0)
    x, y = torch.randn(16, 1, 8, 12), torch.arange(16) % 4
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.05
    with pytest.raises(UsageError, match="dropout"):
        AudioCNN(num_classes=10, dropout=1.5)


# ---------------------------------------------------------------- real data

FSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fsdd"


@pytest.mark.skipif(not (FSDD / "recordings").is_dir(), reason="../shared/data/fsdd is absent")
def test_real_fsdd_reads_all_recordings(tmp_path: Path) -> None:
    bundle = load_fsdd(FSDD, "speaker:theo", AudioOptions(cache_dir=str(tmp_path)))
    assert len(bundle.test) == 500 and len(bundle.train) + len(bundle.val) == 2500
