"""raytag.data.audio: decoding, mono mixing, resampling and every decode error."""

import numpy as np
import pytest
import soundfile as sf

from raytag.data.audio import audio_info, load_audio
from raytag.errors import AudioDecodeError


def sine(freq, seconds, sr, channels=1, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def peak_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def test_wav_at_its_own_rate_is_returned_unchanged(tmp_path):
    x = sine(440, 0.5, 16000)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", 16000)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_allclose(y, x, atol=1e-6)
    assert load_audio(tmp_path / "a.wav", None).shape == (8000,)


def test_stereo_44k_is_mixed_to_mono_and_resampled(tmp_path):
    left = sine(1000, 1.0, 44100)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # mean of channels halves it
    sf.write(tmp_path / "s.wav", stereo, 44100, subtype="PCM_16")
    y = load_audio(tmp_path / "s.wav", 16000)
    assert y.dtype == np.float32
    assert abs(len(y) - 16000) <= 1
    assert peak_hz(y, 16000) == pytest.approx(1000, abs=2)
    mid = y[2000:-2000]  # away from the resampler's edges
    assert np.abs(mid).max() == pytest.approx(0.25, abs=0.01)


def test_upsampling_keeps_length_and_pitch(tmp_path):
    sf.write(tmp_path / "low.wav", sine(300, 0.8, 8000), 8000)
    y = load_audio(tmp_path / "low.wav", 22050)
    assert abs(len(y) - int(0.8 * 22050)) <= 1
    assert peak_hz(y, 22050) == pytest.approx(300, abs=2)


@pytest.mark.parametrize("ext,kwargs", [("flac", {}), ("ogg", {"format": "OGG", "subtype": "VORBIS"})])
def test_flac_and_ogg_decode(tmp_path, ext, kwargs):
    path = tmp_path / f"x.{ext}"
    sf.write(path, sine(2000, 1.0, 32000, channels=2), 32000, **kwargs)
    y = load_audio(path, 16000)
    assert abs(len(y) - 16000) <= 64  # vorbis may pad a little
    assert peak_hz(y, 16000) == pytest.approx(2000, abs=3)
    duration, sr, ch = audio_info(path)
    assert (sr, ch) == (32000, 2) and duration == pytest.approx(1.0, abs=0.01)


def test_audio_info_reads_header(tmp_path):
    sf.write(tmp_path / "a.wav", sine(440, 1.5, 22050, channels=2), 22050)
    assert audio_info(tmp_path / "a.wav") == (pytest.approx(1.5), 22050, 2)


def test_garbage_file_says_what_soundfile_said(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioDecodeError) as err:
        load_audio(bad, 16000)
    assert err.value.path == str(bad)
    assert err.value.reason.startswith("cannot decode:") and len(err.value.reason) > len("cannot decode: ")
    with pytest.raises(AudioDecodeError, match="unreadable audio header"):
        audio_info(bad)


def test_a_damaged_file_is_a_lasting_failure_an_io_error_a_passing_one(tmp_path, monkeypatch):
    """A cache remembers a file libsndfile cannot make sense of (it fails the same way every
    time) and tries again only an I/O failure (libsndfile's "System error.")."""
    import raytag.data.audio as audio_module
    from raytag.data.audio import AudioReadError

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    for read in (lambda p: load_audio(p, 16000), audio_info):
        with pytest.raises(AudioDecodeError) as err:
            read(bad)
        assert not isinstance(err.value, AudioReadError)

    sf.write(tmp_path / "ok.wav", sine(440, 0.5, 16000), 16000)

    def system_error(*args, **kwargs):
        raise sf.LibsndfileError(2, prefix="Error opening: ")

    monkeypatch.setattr(audio_module.sf, "SoundFile", system_error)
    monkeypatch.setattr(audio_module.sf, "info", system_error)
    for read in (lambda p: load_audio(p, 16000), audio_info):
        with pytest.raises(AudioReadError, match="System error"):
            read(tmp_path / "ok.wav")


def test_missing_file(tmp_path):
    with pytest.raises(AudioDecodeError, match="nope.wav: file not found"):
        load_audio(tmp_path / "nope.wav", 16000)


def test_empty_file(tmp_path):
    sf.write(tmp_path / "e.wav", np.zeros(0), 16000)
    assert audio_info(tmp_path / "e.wav")[0] == 0.0
    with pytest.raises(AudioDecodeError, match="empty"):
        load_audio(tmp_path / "e.wav", 16000)


def test_any_nan_or_inf_sample_is_an_error_never_zeroed(tmp_path):
    sf.write(tmp_path / "nan.wav", np.full(1000, np.nan), 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="1000 of 1000 samples are not finite"):
        load_audio(tmp_path / "nan.wav", 16000)
    x = sine(440, 0.1, 16000)
    x[10:15] = np.inf
    sf.write(tmp_path / "some.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"some.wav: 5 of 1600 samples are not finite"):
        load_audio(tmp_path / "some.wav", 16000)


def test_shorter_than_one_frame(tmp_path):
    sf.write(tmp_path / "short.wav", sine(440, 0.01, 16000), 16000)  # 160 samples
    assert load_audio(tmp_path / "short.wav", 16000, min_samples=160).shape == (160,)
    with pytest.raises(AudioDecodeError, match="too short: 160 samples .* at least 1024"):
        load_audio(tmp_path / "short.wav", 16000, min_samples=1024)


def test_channels_that_cancel_are_silence_not_a_clip_of_zeros(tmp_path):
    tone = np.sin(np.linspace(0, 200, 8000)).astype(np.float32)
    path = tmp_path / "cancel.wav"
    sf.write(path, np.stack([tone, -tone], axis=1), 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="digital silence.*once its channels are averaged"):
        load_audio(path, 8000)


def test_a_wav_cut_short_is_an_error_not_a_shorter_clip(tmp_path):
    """An interrupted copy leaves a WAV whose header promises more frames than it holds."""
    sf.write(tmp_path / "whole.wav", sine(440, 1.0, 16000), 16000, subtype="PCM_16")
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    for read in (lambda p: load_audio(p, 16000), audio_info):
        with pytest.raises(AudioDecodeError, match="truncated: header says 16000 frames, file holds 79"):
            read(tmp_path / "cut.wav")
    assert load_audio(tmp_path / "whole.wav", 16000).shape == (16000,)
    assert audio_info(tmp_path / "whole.wav")[0] == pytest.approx(1.0)



CONTAINERS = [  # (format, subtype, extension): libsndfile counts what these hold, not what their header says
    ("RF64", "PCM_16", "wav"),  # what ffmpeg and field recorders write for long .wav files
    ("W64", "PCM_24", "w64"),
    ("AIFF", "PCM_16", "aiff"),
    ("AIFF", "IMA_ADPCM", "aifc"),
    ("AU", "PCM_16", "au"),
]


@pytest.mark.parametrize("fmt, subtype, ext", CONTAINERS)
def test_other_containers_cut_short_are_errors_not_shorter_clips(tmp_path, fmt, subtype, ext):
    x = sine(440, 1.0, 16000)
    whole = tmp_path / f"whole.{ext}"
    sf.write(whole, x, 16000, format=fmt, subtype=subtype)
    data = whole.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: int(len(data) * 0.6)])
    for read in (lambda p: load_audio(p, 16000, 1024), audio_info):
        with pytest.raises(AudioDecodeError, match=r"truncated: header says \d+ frames, file holds \d+ .*copy the "
                                                   "file again"):
            read(tmp_path / f"cut.{ext}")
    with sf.SoundFile(whole) as f:  # a whole file decodes as libsndfile decodes it
        np.testing.assert_array_equal(load_audio(whole, None), f.read(dtype="float32"))


def test_an_ogg_cut_short_is_an_error_not_a_shorter_or_empty_clip(tmp_path):
    """An Ogg header holds no length: libsndfile takes it from the last whole page, so a cut
    file decoded as a shorter clip (or, cut before the first audio page, as "empty")."""
    whole = tmp_path / "whole.ogg"
    sf.write(whole, 0.3 * np.random.default_rng(0).standard_normal(80000), 16000)  # noise: several pages
    data = whole.read_bytes()
    pages = [i for i in range(1, len(data)) if data[i:i + 4] == b"OggS"]
    for cut, why in [(len(data) // 2, "truncated: its last Ogg page is cut off.*copy the file again$"),
                     (len(data) - 10, "truncated: .*cut off"), (pages[2] + 100, "truncated: .*cut off"),
                     # whole pages, the last without its mark: a copy stopped at a page's end, but more
                     # often a recording stopped without closing the file, which a copy cannot mend
                     (pages[-1], r"truncated or not closed properly \(an interrupted copy or recording\): .*has no "
                                 r"end-of-stream mark; copy the file again, or .* close it .*ffmpeg -i FILE -c:a copy")]:
        (tmp_path / "cut.ogg").write_bytes(data[:cut])
        for read in (lambda p: load_audio(p, 16000, 1024), audio_info):
            with pytest.raises(AudioDecodeError, match=why):
                read(tmp_path / "cut.ogg")
    assert load_audio(whole, None).shape == (80000,)
    sf.write(tmp_path / "empty.ogg", np.zeros(0, np.float32), 16000)  # a whole stream with no samples
    with pytest.raises(AudioDecodeError, match=r"empty audio \(0 samples\)"):
        load_audio(tmp_path / "empty.ogg", 16000)

def test_a_missing_or_unreadable_file_says_so_not_system_error(tmp_path, monkeypatch):
    import raytag.data.audio as audio_module
    from raytag.data.audio import AudioReadError

    for read in (lambda p: load_audio(p, 16000), audio_info):
        with pytest.raises(AudioReadError, match="missing.wav: file not found$"):
            read(tmp_path / "missing.wav")
    sf.write(tmp_path / "locked.wav", sine(440, 0.5, 16000), 16000)

    def denied(path, *args, **kwargs):  # what chmod 000 does for a user other than root
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(audio_module, "open", denied, raising=False)
    for read in (lambda p: load_audio(p, 16000), audio_info):
        with pytest.raises(AudioReadError, match="locked.wav: permission denied"):
            read(tmp_path / "locked.wav")


def test_resampled_length_counts_as_the_decoder_does():
    """The header check predicts the decoded length; soxr rounds half up (400 samples at
    16 kHz are 1102.5 at 44.1 kHz: 1103)."""
    import soxr

    from raytag.data.audio import resampled_length

    for rate_in, rate_out in [(44100, 16000), (16000, 44100), (22050, 16000), (48000, 32000)]:
        for n in (1, 15, 400, 1411, 2822, 4001):
            got = soxr.resample(np.ones(n, np.float32), rate_in, rate_out, quality="HQ").size
            assert resampled_length(n, rate_in, rate_out) == got, (rate_in, rate_out, n)
    assert resampled_length(123, 16000, 16000) == resampled_length(123, 16000, None) == 123


def test_a_file_that_needs_more_memory_than_is_free_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from raytag.data.audio import decode_bytes_per_sample

    path = tmp_path / "long.wav"
    sf.write(path, sine(440, 1.0, 16000, channels=2), 16000, subtype="PCM_16")
    needs = 32000 * decode_bytes_per_sample(2, 16000, 16000)
    assert load_audio(path, 16000, max_bytes=int(needs) + 1).shape == (16000,)

    def unread(*args, **kwargs):
        raise AssertionError("read although refused")

    monkeypatch.setattr(sf.SoundFile, "read", unread)
    with pytest.raises(AudioDecodeError, match=r"too long to decode whole: 32000 samples \(16000 frames x 2 channels\)"):
        load_audio(path, 16000, max_bytes=int(needs) - 100)


GIB = 2**30


def _fake_machine(tmp_path, cgroups: dict, own: str = "/", mem_available: int = 60 * GIB):
    """A stand-in for / under tmp_path (pass it as `root`): /proc/meminfo, /proc/self/cgroup
    and a cgroup v2 tree; `cgroups` maps a cgroup path to its (memory.max, memory.current,
    memory.stat text)."""
    _write_cgroups(tmp_path / "sys/fs/cgroup", cgroups, ("memory.max", "memory.current"))
    _write_meminfo(tmp_path, f"MemTotal: 67108864 kB\nMemAvailable: {mem_available // 1024} kB\n")
    _write_self_cgroup(tmp_path, f"0::{own}\n")
    return tmp_path


def _write_cgroups(hierarchy, cgroups: dict, files: tuple[str, str]) -> None:
    """Each cgroup's folder under `hierarchy` with its limit and usage in `files` (v2:
    memory.max, memory.current; v1: memory.limit_in_bytes, memory.usage_in_bytes) and its
    memory.stat."""
    for name, (limit, usage, stat) in cgroups.items():
        folder = hierarchy / name.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / files[0]).write_text(f"{limit}\n")
        (folder / files[1]).write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(stat)


def _write_meminfo(root, text: str) -> None:
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/meminfo").write_text(text)


def _write_self_cgroup(root, text: str) -> None:
    (root / "proc/self").mkdir(parents=True, exist_ok=True)
    (root / "proc/self/cgroup").write_text(text)


def _fake_v1_machine(tmp_path, cgroups: dict, own: str, meminfo: str):
    """A stand-in for / with cgroup v1's memory hierarchy: `cgroups` maps a cgroup path to
    its (memory.limit_in_bytes, memory.usage_in_bytes, memory.stat text)."""
    _write_cgroups(tmp_path / "sys/fs/cgroup/memory", cgroups, ("memory.limit_in_bytes", "memory.usage_in_bytes"))
    _write_meminfo(tmp_path, meminfo)
    # a v1 machine lists each controller's hierarchy, and the (empty) unified one
    _write_self_cgroup(tmp_path, f"12:cpu,cpuacct:{own}\n11:memory:{own}\n0::/\n")
    return tmp_path


def test_page_cache_in_a_container_is_not_taken_for_used_memory(tmp_path):
    """memory.current charges the page cache of every file the container read: with 3.9 of
    its 4 GiB charged, 3.5 GiB of it file cache, the free memory read 102 MiB and a
    3-minute stereo clip (189 MiB) was refused. The cache the kernel reclaims is free."""
    from raytag.data import audio

    stat = f"anon {400 * 2**20}\nfile {int(3.5 * GIB)}\nactive_file {GIB // 2}\ninactive_file {3 * GIB}\nshmem 0\n"
    root = _fake_machine(tmp_path, {"/": (4 * GIB, int(3.9 * GIB), stat)})
    assert audio.available_memory(root) == 4 * GIB - (int(3.9 * GIB) - int(3.5 * GIB))
    per_sample = audio.decode_bytes_per_sample(2, 44100, 32000)
    assert audio.samples_over_cap(180 * 44100, 2, int(audio.decode_memory_budget(root) // per_sample)) is None


def test_a_cgroup_over_its_limit_for_a_moment_still_decodes_an_ordinary_clip(tmp_path):
    """memory.current just above memory.max read as 0 bytes free, and a 1 s clip was
    refused: the budget never falls below DECODE_MEMORY_FLOOR."""
    from raytag.data import audio

    root = _fake_machine(tmp_path, {"/": (4 * GIB, 4 * GIB + 4096, "anon 4294971392\n")})
    assert audio.available_memory(root) == 0
    assert audio.decode_memory_budget(root) == audio.DECODE_MEMORY_FLOOR
    path = tmp_path / "one_second.wav"
    sf.write(path, sine(440, 1.0, 16000), 16000)
    assert load_audio(path, 16000, max_bytes=audio.decode_memory_budget(root)).shape == (16000,)


def test_the_limit_of_the_process_s_own_cgroup_or_a_parent_s_counts(tmp_path):
    """Outside a cgroup namespace the process's cgroup is a subfolder (/proc/self/cgroup),
    and the limit may be set on a parent (a pod's, over its container's); the tightest wins."""
    from raytag.data import audio

    pod = (2 * GIB, GIB, f"inactive_file {GIB // 4}\n")
    root = _fake_machine(tmp_path, {"/kubepods": ("max", 5 * GIB, ""), "/kubepods/pod1": pod,
                                    "/kubepods/pod1/ctr": ("max", GIB, "")}, own="/kubepods/pod1/ctr")
    assert audio.available_memory(root) == 2 * GIB - (GIB - GIB // 4)
    _write_meminfo(root, "MemAvailable: 524288 kB\n")  # the machine's own is tighter still
    assert audio.available_memory(root) == 512 * 2**20


def test_cgroup_v2_memory_high_below_memory_max_is_the_limit(tmp_path):
    """memory.high (systemd's MemoryHigh=) throttles the cgroup and reclaims hard above it,
    however far off memory.max is; only memory.max was read, so a cgroup with memory.high
    at 2 GiB and no memory.max read as the machine's 60 GiB free."""
    from raytag.data import audio

    root = _fake_machine(tmp_path, {"/": ("max", GIB, f"inactive_file {GIB // 4}\n")})
    (root / "sys/fs/cgroup/memory.high").write_text(f"{2 * GIB}\n")
    assert audio.available_memory(root) == 2 * GIB - (GIB - GIB // 4)
    (root / "sys/fs/cgroup/memory.max").write_text(f"{int(1.5 * GIB)}\n")  # the lower of the two wins
    assert audio.available_memory(root) == int(1.5 * GIB) - (GIB - GIB // 4)
    (root / "sys/fs/cgroup/memory.high").write_text("max\n")  # "max": no limit
    assert audio.available_memory(root) == int(1.5 * GIB) - (GIB - GIB // 4)
    (root / "sys/fs/cgroup/memory.max").write_text("max\n")
    assert audio.available_memory(root) == 60 * GIB


def test_cgroup_v1_memory_limit_counts(tmp_path):
    """A cgroup v1 machine (older Docker, Kubernetes and HPC nodes) sets the limit in
    memory/memory.limit_in_bytes: it was not read, so a 4 GiB container read the machine's
    60 GiB free. Its usage counts page cache as v2's does (memory.stat's total_*_file)."""
    from raytag.data import audio

    stat = f"cache {3 * GIB}\nrss {GIB // 2}\ntotal_inactive_file {2 * GIB}\ntotal_active_file {GIB}\n"
    root = _fake_v1_machine(tmp_path, {"/": (4 * GIB, int(3.5 * GIB), stat)}, own="/docker/0123abcd",
                            meminfo="MemTotal: 67108864 kB\nMemAvailable: 62914560 kB\n")
    assert audio.available_memory(root) == 4 * GIB - GIB // 2
    assert audio.decode_memory_budget(root) == 4 * GIB - GIB // 2


def test_cgroup_v1_s_no_limit_values_limit_nothing(tmp_path):
    """cgroup v1 writes "no limit" as a huge page-aligned number (9223372036854771712); a
    container without a limit of its own under a pod with one (Kubernetes on v1) has the
    pod's, and where no cgroup has one and MemAvailable cannot be read there is no cap,
    not a cap of exabytes. A limit above the machine's memory limits nothing either."""
    from raytag.data import audio

    no_limit, above_the_machine = 9223372036854771712, 2**50
    cgroups = {"/": (no_limit, 10 * GIB, ""), "/kubepods": (above_the_machine, 5 * GIB, ""),
               "/kubepods/pod1": (2 * GIB, GIB, ""), "/kubepods/pod1/ctr": (no_limit, GIB, "")}
    root = _fake_v1_machine(tmp_path, cgroups, own="/kubepods/pod1/ctr", meminfo="MemTotal: 67108864 kB\n")
    assert audio.available_memory(root) == GIB
    (root / "sys/fs/cgroup/memory/kubepods/pod1/memory.limit_in_bytes").write_text(f"{no_limit}\n")
    assert audio.available_memory(root) is None
    assert audio.decode_memory_budget(root) is None
    (root / "sys/fs/cgroup/memory/kubepods/memory.limit_in_bytes").write_text(f"{no_limit}\n")
    _write_meminfo(root, "")  # the machine's memory unknown: v1's no-limit value is still no limit
    assert audio.available_memory(root) is None


def test_a_file_refused_for_memory_may_pass_another_time(tmp_path):
    from raytag.data.audio import AudioMemoryError, AudioReadError

    path = tmp_path / "a.wav"
    sf.write(path, sine(440, 1.0, 16000), 16000)
    with pytest.raises(AudioMemoryError, match="more than the 0.0 GB available") as err:
        load_audio(path, 16000, max_bytes=1000)
    assert isinstance(err.value, AudioReadError)  # not remembered as a bad file
