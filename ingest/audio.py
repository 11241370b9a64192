"""PCM conversion, pure: client PCM (s16le, interleaved, any rate/channels) to s16le mono."""

from __future__ import annotations

import math

import numpy as np
import soxr

BYTES_PER_SAMPLE = 2


class PcmConverter:
    """Streaming converter: downmix to mono (`ChannelMixer`), then resample to `out_rate`.

    The resampler keeps state between calls, so converting a stream chunk by chunk gives the same
    samples as converting it whole (no clicks at chunk boundaries); `flush()` returns the tail it
    still holds. Bytes that do not complete a sample frame are carried over to the next call.
    """

    def __init__(self, in_rate: int, channels: int, out_rate: int = 16000) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        if channels < 1:
            raise ValueError("channels must be at least 1")
        self.in_rate = in_rate
        self.channels = channels
        self.out_rate = out_rate
        self._frame_bytes = BYTES_PER_SAMPLE * channels
        self._carry = b""
        self._resampler = (
            # float32, not int16: soxr's int16 output is dithered, so it would differ by a few
            # LSB depending on how the stream was chunked; float32 output does not.
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
            if in_rate != out_rate
            else None
        )
        self._mixer = ChannelMixer(channels, max(1, in_rate // 10), full_scale=32768.0)
        self._flushed = False

    @property
    def passthrough(self) -> bool:
        return self.channels == 1 and self._resampler is None

    def convert(self, pcm: bytes) -> bytes:
        if self._flushed:
            raise RuntimeError("convert() after flush()")
        if self._carry:
            pcm = self._carry + pcm
        whole = len(pcm) - len(pcm) % self._frame_bytes
        self._carry = pcm[whole:]
        if self.passthrough:
            return pcm[:whole]
        if not whole:
            return b""
        mono = self._downmix(np.frombuffer(pcm, dtype="<i2", count=whole // BYTES_PER_SAMPLE))
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        return _to_s16(mono)

    def flush(self) -> bytes:
        """End the stream: the resampler's remaining output (an incomplete frame is dropped)."""
        if self._flushed:
            return b""
        self._flushed = True
        self._carry = b""
        if self._resampler is None:
            return b""
        return _to_s16(self._resampler.resample_chunk(np.zeros(0, np.float32), last=True))

    def _downmix(self, samples: np.ndarray) -> np.ndarray:
        if self.channels == 1:
            return samples.astype(np.float32)
        return self._mixer.mix(samples.reshape(-1, self.channels).T.astype(np.float32))


class ChannelMixer:
    """Mixes (channels, n) float32 audio to mono by averaging, after turning over a channel that
    runs in antiphase with the first (a microphone with its poles swapped, a "wide" stereo
    effect): averaged as it is, such a pair cancels and the speech is lost.

    A channel's polarity is judged at `block_samples` boundaries of the stream (so the output
    does not depend on how the stream was cut up) on its correlation with the first over the
    last `window_blocks` blocks or so (a moving window: after a long stretch one way, the other
    is followed within 1.4 windows, 3 s at 100 ms blocks), each block's mean taken out (a DC
    offset says nothing of polarity): turned over below
    `FLIP_BELOW`, back above `RESTORE_ABOVE`, never while either is quieter than -60 dBFS (of
    `full_scale`) over that window. Until a channel is turned over the mix is the plain average.
    Samples that are not finite count as silence in the judgement."""

    FLIP_BELOW = -0.5
    RESTORE_ABOVE = -0.3
    QUIET_DBFS = -60.0

    def __init__(
        self, channels: int, block_samples: int, full_scale: float = 1.0, window_blocks: int = 20
    ) -> None:
        self.channels = channels
        self.block_samples = block_samples
        self._quiet = (full_scale * 10 ** (self.QUIET_DBFS / 20)) ** 2  # a mean square
        self._keep = 1.0 - 1.0 / window_blocks  # what a block leaves of the window before it
        self._filled = 0
        self._sum = np.zeros(channels)  # this block's sums: x_i, x_i**2, x_0 * x_i
        self._squares = np.zeros(channels)
        self._products = np.zeros(channels)
        self._heard = 0.0  # the window's samples, energies and cross terms, decayed
        self._energy = np.zeros(channels)
        self._cross = np.zeros(channels)
        self.flipped = np.zeros(channels, dtype=bool)

    def mix(self, planes: np.ndarray) -> np.ndarray:
        if self.channels == 1:
            return planes[0].astype(np.float32)
        out = np.empty(planes.shape[1], dtype=np.float32)
        at = 0
        while at < planes.shape[1]:
            part = planes[:, at : at + self.block_samples - self._filled]
            if self.flipped.any():
                signs = np.where(self.flipped, -1.0, 1.0).astype(np.float32)[:, None]
                out[at : at + part.shape[1]] = (part * signs).mean(axis=0, dtype=np.float32)
            else:
                out[at : at + part.shape[1]] = part.mean(axis=0, dtype=np.float32)
            wide = np.nan_to_num(part.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            self._sum += wide.sum(axis=1)
            self._squares += np.einsum("ij,ij->i", wide, wide)
            self._products += wide @ wide[0]
            self._filled += part.shape[1]
            at += part.shape[1]
            if self._filled == self.block_samples:
                self._end_block()
        return out

    def _end_block(self) -> None:
        n = self._filled
        keep = self._keep
        self._heard = keep * self._heard + n
        self._energy = keep * self._energy + self._squares - self._sum**2 / n
        self._cross = keep * self._cross + self._products - self._sum[0] * self._sum / n
        self._filled = 0
        self._sum[:] = self._squares[:] = self._products[:] = 0.0
        floor = self._quiet * self._heard
        for channel in range(1, self.channels):
            if self._energy[0] < floor or self._energy[channel] < floor:
                continue
            r = self._cross[channel] / np.sqrt(self._energy[0] * self._energy[channel])
            if r < self.FLIP_BELOW:
                self.flipped[channel] = True
            elif r > self.RESTORE_ABOVE:
                self.flipped[channel] = False


class DcBlocker:
    """Removes a constant offset from s16le mono PCM (a sound card's DC bias), which the level
    gate would take for loudness. The offset is estimated over 100 ms blocks of the stream (the
    mean of every block so far for the first `time_constant_s`, then a moving mean) and each
    block has the estimate of the blocks before it subtracted, once half of `time_constant_s`
    has been heard, ramped across the block from the last block's (a step would be a click);
    below `threshold` (about -60 dBFS) nothing is subtracted. Blocks follow the stream, not its
    chunks: the output does not depend on how the stream was cut up."""

    def __init__(self, sample_rate: int, time_constant_s: float = 1.0, threshold: float = 32.0):
        self._block = max(1, sample_rate // 10)
        self._blocks_per_tau = max(1.0, time_constant_s * 10)
        self._threshold = threshold
        self.offset = 0.0  # the current estimate, in sample units
        self._shift_from = 0  # subtracted at the current block's start, ramping to ...
        self._shift = 0  # ... this at its end
        self._blocks = 0
        self._sum = 0
        self._filled = 0

    def remove(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // BYTES_PER_SAMPLE)
        pieces: list[np.ndarray] = []
        shifted = False
        at = 0
        while at < samples.size:
            piece = samples[at : at + self._block - self._filled]
            at += piece.size
            self._sum += int(piece.sum(dtype=np.int64))
            start, self._filled = self._filled, self._filled + piece.size
            if self._shift or self._shift_from:
                piece = np.clip(
                    piece.astype(np.int32) - self._ramp(start, piece.size), -32768, 32767
                )
                shifted = True
            pieces.append(piece)
            if self._filled == self._block:
                self._end_block()
        if not shifted:
            return pcm
        return np.concatenate(pieces).astype("<i2").tobytes()

    def _ramp(self, start: int, size: int) -> int | np.ndarray:
        """What is subtracted from samples `start` to `start + size` of the current block."""
        low, high = self._shift_from, self._shift
        if low == high:
            return high
        position = np.arange(start + 1, start + size + 1, dtype=np.float64) / self._block
        return np.rint(low + (high - low) * position).astype(np.int32)

    def _end_block(self) -> None:
        self._blocks += 1
        self._shift_from = self._shift
        weight = max(1 / self._blocks, 1 / self._blocks_per_tau)
        self.offset += weight * (self._sum / self._filled - self.offset)
        self._sum = self._filled = 0
        heard = self._blocks >= self._blocks_per_tau / 2
        self._shift = round(self.offset) if heard and abs(self.offset) >= self._threshold else 0


FLOOR_DB = -90.0  # level of digital silence (log of zero is clamped here)


def frame_dbfs(frame: bytes) -> float:
    """RMS level of s16le `frame` in dB relative to full scale (a trailing odd byte ignored):
    the one energy measure (the local engine's gate, Google's quiet cut points)."""
    samples = np.frombuffer(frame[: len(frame) - len(frame) % 2], dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return FLOOR_DB
    rms = math.sqrt(float(np.mean(samples * samples))) / 32768.0
    return max(FLOOR_DB, 20 * math.log10(rms)) if rms > 0 else FLOOR_DB


def _to_s16(samples: np.ndarray) -> bytes:
    # Resampling can overshoot full scale slightly (Gibbs ringing): clip rather than wrap.
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
