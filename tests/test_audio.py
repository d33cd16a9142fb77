"""Audio decoding against independent oracles: numpy encodings, scipy resampling, soundfile itself."""
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile
from hypothesis import given, settings, strategies as st

from rc_nbkit.audio import (
    DataError, audio_info, chunk_waveform, decode_audio_bytes, load_audio, resample, to_mono, truncate_waveform,
)
from rc_nbkit.core import InputError

REAL = Path(__file__).resolve().parent.parent / "data" / "real"


def reference_clip() -> np.ndarray:
    waveform, rate = soundfile.read(REAL / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav", dtype="float64")
    assert rate == 16_000
    return waveform


def assert_reason(function, reason: str) -> str:
    with pytest.raises(DataError) as caught:
        function()
    assert caught.value.reason == reason, str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("rate", [8_000, 22_050, 44_100, 48_000])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_load_audio_matches_scipy_resample(tmp_path, rate, channels):
    rng = np.random.default_rng(rate + channels)
    seconds = 1.5
    time = np.arange(int(seconds * rate)) / rate
    frequencies = rng.uniform(200, 3_000, size=channels)
    signal = np.stack([0.3 * np.sin(2 * np.pi * f * time) for f in frequencies], axis=1)
    path = tmp_path / "tone.wav"
    soundfile.write(path, signal, rate, subtype="FLOAT")

    decoded = load_audio(path)

    mono = signal.mean(axis=1)
    divisor = np.gcd(16_000, rate)
    oracle = scipy.signal.resample_poly(mono, 16_000 // divisor, rate // divisor)
    assert decoded.dtype == np.float32
    assert abs(len(decoded) - len(oracle)) <= 1
    length = min(len(decoded), len(oracle))
    edge = 400
    assert np.abs(decoded[edge : length - edge] - oracle[edge : length - edge]).max() < 3e-3


@pytest.mark.parametrize(
    "subtype, dtype, scale",
    [("PCM_S8", "i1", 128), ("PCM_16", "<i2", 32_768), ("PCM_32", "<i4", 2**31), ("FLOAT", "<f4", 1), ("DOUBLE", "<f8", 1)],
)
def test_headerless_pcm_formats(tmp_path, subtype, dtype, scale):
    clip = reference_clip()
    encoded = np.clip(np.round(clip * scale), -scale, scale - 1) if scale > 1 else clip
    path = tmp_path / "clip.pcm"
    path.write_bytes(encoded.astype(dtype).tobytes())

    decoded = load_audio(path, raw_sample_rate=16_000, raw_subtype=subtype)

    np.testing.assert_allclose(decoded, encoded / scale, atol=1e-6)


def test_headerless_pcm_24_bit(tmp_path):
    clip = reference_clip()
    integers = np.round(clip * 2**23).astype("<i4")
    packed = np.frombuffer(integers.tobytes(), dtype=np.uint8).reshape(-1, 4)[:, :3].tobytes()
    path = tmp_path / "clip.raw"
    path.write_bytes(packed)

    decoded = load_audio(path, raw_sample_rate=16_000, raw_subtype="PCM_24")

    np.testing.assert_allclose(decoded, integers / 2**23, atol=1e-6)


def test_headerless_stereo_pcm_is_mixed(tmp_path):
    clip = reference_clip()
    left = np.round(clip * 16_000).astype("<i2")
    right = np.round(clip * 8_000).astype("<i2")
    path = tmp_path / "stereo.raw"
    path.write_bytes(np.stack([left, right], axis=1).tobytes())

    decoded = load_audio(path, raw_sample_rate=16_000, raw_subtype="PCM_16", raw_channels=2)

    np.testing.assert_allclose(decoded, (left / 32_768 + right / 32_768) / 2, atol=1e-6)


def test_headerless_pcm_at_other_rate_is_resampled(tmp_path):
    rate = 8_000
    tone = 0.4 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    path = tmp_path / "tone.raw"
    path.write_bytes(np.round(tone * 32_767).astype("<i2").tobytes())

    decoded = load_audio(path, raw_sample_rate=rate, raw_subtype="PCM_16")

    expected = 0.4 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert len(decoded) == 16_000
    assert np.abs(decoded[300:-300] - expected[300:-300]).max() < 2e-3


@pytest.mark.parametrize(
    "container, subtype, suffix",
    [("OGG", "OPUS", ".opus"), ("OGG", "VORBIS", ".ogg"), ("MP3", "MPEG_LAYER_III", ".mp3"), ("FLAC", "PCM_24", ".flac")],
)
def test_compressed_formats_keep_the_speech(tmp_path, container, subtype, suffix):
    clip = reference_clip()
    path = tmp_path / f"clip{suffix}"
    soundfile.write(path, clip, 16_000, format=container, subtype=subtype)

    decoded = load_audio(path).astype(np.float64)

    assert abs(len(decoded) - len(clip)) < 0.05 * len(clip)
    # Lossy codecs delay and reshape the signal, so compare the spectral envelopes of the two.
    _, reference_psd = scipy.signal.welch(clip, 16_000, nperseg=512)
    _, decoded_psd = scipy.signal.welch(decoded[: len(clip)], 16_000, nperseg=512)
    speech_band = slice(4, 96)  # 125 Hz to 3 kHz
    log_difference = np.abs(np.log10(decoded_psd[speech_band] + 1e-12) - np.log10(reference_psd[speech_band] + 1e-12))
    assert np.median(log_difference) < 0.3


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
def test_truncated_files_are_rejected(tmp_path, suffix):
    clip = reference_clip()
    path = tmp_path / f"clip{suffix}"
    soundfile.write(path, clip, 16_000)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 3])

    with pytest.raises(DataError) as caught:
        load_audio(cut)

    assert caught.value.reason in ("truncated", "unreadable")
    assert str(cut) in str(caught.value)


def test_bad_inputs_name_the_file_and_reason(tmp_path):
    clip = reference_clip()
    silent = tmp_path / "silent.flac"
    soundfile.write(silent, np.zeros(8_000), 16_000)
    near_silent = tmp_path / "hiss.wav"
    soundfile.write(near_silent, np.full(8_000, 5e-5), 16_000, subtype="FLOAT")
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.where(np.arange(len(clip)) == 100, np.nan, clip), 16_000, subtype="FLOAT")
    infinite = tmp_path / "inf.wav"
    soundfile.write(infinite, np.where(np.arange(len(clip)) == 7, -np.inf, clip), 16_000, subtype="DOUBLE")
    clipped = tmp_path / "clipped.wav"
    soundfile.write(clipped, np.clip(clip * 40, -1, 1), 16_000)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0), 16_000)
    text_file = tmp_path / "notes.wav"
    text_file.write_text("this is a text file with an audio suffix")

    assert "missing.wav" in assert_reason(lambda: load_audio(tmp_path / "missing.wav"), "missing_file")
    assert "silent.flac" in assert_reason(lambda: load_audio(silent), "silent")
    assert_reason(lambda: load_audio(near_silent), "silent")
    assert "first at sample 100" in assert_reason(lambda: load_audio(nan), "non_finite")
    assert_reason(lambda: load_audio(infinite), "non_finite")
    assert "max_clipped_fraction=None" in assert_reason(lambda: load_audio(clipped), "clipped")
    assert_reason(lambda: load_audio(empty), "empty_audio")
    assert_reason(lambda: load_audio(text_file), "unreadable")
    assert_reason(lambda: audio_info(text_file), "unreadable")
    assert_reason(lambda: load_audio(REAL / "cards" / "001.wav", expected_sample_rate=8_000), "sample_rate_mismatch")
    assert load_audio(clipped, max_clipped_fraction=None).shape == clip.shape
    assert load_audio(silent, check=False).shape == (8_000,)


def test_bad_raw_declarations(tmp_path):
    path = tmp_path / "clip.raw"
    path.write_bytes(np.zeros(100, "<i2").tobytes() + b"\x01")
    with pytest.raises(InputError, match="raw_sample_rate and raw_subtype"):
        load_audio(path)
    assert_reason(lambda: load_audio(path, raw_sample_rate=-16_000, raw_subtype="PCM_16"), "sample_rate_mismatch")
    assert_reason(lambda: load_audio(path, raw_sample_rate=16_000.5, raw_subtype="PCM_16"), "sample_rate_mismatch")
    assert_reason(lambda: load_audio(path, raw_sample_rate=16_000, raw_subtype="PCM_16"), "truncated")
    with pytest.raises(InputError, match="raw_subtype"):
        load_audio(path, raw_sample_rate=16_000, raw_subtype="OPUS")


def test_decode_audio_bytes_matches_load_audio():
    path = REAL / "cards" / "002.wav"
    np.testing.assert_array_equal(decode_audio_bytes(path.read_bytes(), "cards/002.wav"), load_audio(path))
    assert_reason(lambda: decode_audio_bytes(b"RIFF\x00\x00", "broken.wav"), "unreadable")


def test_audio_info_reads_header_only():
    info = audio_info(REAL / "librivox" / "sense_and_sensibility_01_austen_64kb-0870.wav")
    assert (info.sample_rate, info.channels, info.format, info.subtype) == (16_000, 1, "WAV", "PCM_16")
    assert info.duration == pytest.approx(7.10, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(samples=st.integers(0, 200_000), seconds=st.floats(0.5, 12.0))
def test_chunks_cover_waveform_exactly(samples, seconds):
    waveform = np.arange(samples, dtype=np.float32)
    chunks = chunk_waveform(waveform, seconds)
    limit = int(round(seconds * 16_000))
    assert all(len(chunk) <= limit for chunk in chunks)
    assert all(len(chunk) == limit for chunk in chunks[:-1])
    np.testing.assert_array_equal(np.concatenate(chunks), waveform)
    truncated, was_cut = truncate_waveform(waveform, seconds)
    assert was_cut == (samples > limit)
    np.testing.assert_array_equal(truncated, waveform[:limit])


@settings(max_examples=30, deadline=None)
@given(rate=st.sampled_from([8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000]), samples=st.integers(100, 50_000))
def test_resample_length_follows_rate(rate, samples):
    waveform = np.random.default_rng(samples).standard_normal(samples).astype(np.float32) * 0.1
    resampled = resample(waveform, rate)
    assert abs(len(resampled) - samples * 16_000 / rate) <= 1


def test_to_mono_rejects_three_dimensions():
    with pytest.raises(InputError, match="expected"):
        to_mono(np.zeros((2, 2, 2)))
