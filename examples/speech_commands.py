"""Spoken-word recognition with length masks and SpecAugment-style masking.

Real audio, made here: ten command words ("yes", "no", "up", ...) spoken by
espeak-ng in many voices, speeds and pitches, with silence of random length
around them and background noise, so every clip has its own length. Log-mel
features come from `tf.signal`; a `LengthMask` marks each clip's real frames
so padding is never attended or pooled; `TimeFrequencyMasking` hides random
time spans and frequency bands in training only (a fresh pattern each step).
A small Transformer encoder recognizes the words. The held-out clips are
spoken by voices never heard in training.

The example trains the same model from the same seeds twice, with and
without the dynamic time masking (frequency masking in both), and reports
held-out word accuracy for each.

    python examples/speech_commands.py [--seeds 3] [--epochs 20] [--quick]

Needs espeak-ng (Debian/Ubuntu: `apt-get install espeak-ng`); run as root
with apt-get available, the example installs it.
"""

import argparse
import concurrent.futures
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# Imported before Keras: it holds back TensorFlow's start-up log lines.
import keras_dynmask  # noqa: E402

WORDS = "yes no up down left right on off stop go".split()
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029"]
TRAIN_VOICES = "m1 m2 m3 m4 m5 f1 f2 f3 croak klatt".split()
HELD_OUT_VOICES = "m6 m7 f4 f5 klatt3".split()
SAMPLE_RATE = 22050
MEL_BINS = 40


def ensure_espeak():
    """The espeak-ng program, installed with apt-get when allowed."""
    found = shutil.which("espeak-ng")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("espeak-ng is missing: installing it with apt-get ...")
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "espeak-ng"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("espeak-ng")
    if not found:
        sys.exit(
            "This example needs espeak-ng: install it (Debian/Ubuntu: "
            "`sudo apt-get install espeak-ng`) and run it again."
        )
    return found


def speak(espeak, word, voice, speed, pitch):
    """A float32 waveform at 22,050 Hz of `word` in `voice`."""
    wav = subprocess.run(
        [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
        input=word.encode(),
        capture_output=True,
        check=True,
    ).stdout
    # A streamed WAV's header does not know its length: skip its 44 bytes.
    return np.frombuffer(wav[44:], "<i2").astype("float32") / 32768.0


def clips(espeak, voices, per_word, seed):
    """`(waveforms, labels)`: each word `per_word` times, in random
    accents, voices, speeds and pitches, with random silence and noise."""
    rng = np.random.default_rng(seed)
    jobs = []
    for label, word in enumerate(WORDS):
        for _ in range(per_word):
            voice = f"{rng.choice(ACCENTS)}+{rng.choice(voices)}"
            jobs.append(
                (
                    label,
                    (
                        espeak,
                        word,
                        voice,
                        int(rng.integers(110, 240)),
                        int(rng.integers(20, 80)),
                    ),
                )
            )
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        speech = list(pool.map(lambda job: speak(*job[1]), jobs))
    waveforms = []
    for audio in speech:
        before = np.zeros(int(rng.uniform(0, 0.4) * SAMPLE_RATE), "float32")
        after = np.zeros(int(rng.uniform(0, 0.2) * SAMPLE_RATE), "float32")
        audio = np.concatenate([before, audio, after])
        power = np.mean(audio**2) + 1e-12
        snr = 10 ** (rng.uniform(5, 25) / 10)
        noise = rng.normal(0, np.sqrt(power / snr), audio.shape)
        waveforms.append((audio + noise).astype("float32"))
    return waveforms, np.array([label for label, _ in jobs], "int32")


def log_mel(waveform):
    """Log-mel features `(frames, 40)`: 25 ms windows every 10 ms; each
    channel's mean over the clip removed, then scaled to unit variance
    over all channels (a channel that never changes stays zero)."""
    import tensorflow as tf

    stft = tf.signal.stft(
        waveform, frame_length=551, frame_step=220, fft_length=1024
    )
    mel = tf.matmul(tf.abs(stft) ** 2, mel_weights())
    features = tf.math.log(mel + 1e-6).numpy()
    features -= features.mean(axis=0)
    return features / (features.std() + 1e-5)


def mel_weights():
    """`(513, 40)`: FFT bins to mel channels, 80 Hz to 7.6 kHz."""
    import tensorflow as tf

    return tf.signal.linear_to_mel_weight_matrix(
        MEL_BINS, 513, SAMPLE_RATE, 80.0, 7600.0
    )


def batches(features, labels, batch_size, seed=None):
    """`({"features", "lengths"}, labels)` batches, each padded to its own
    longest clip; clips of similar length are batched together."""
    rng = np.random.default_rng(seed)
    noise = rng.random(len(features)) if seed is not None else 0
    order = np.argsort(np.array([len(f) for f in features]) + noise * 10)
    chunks = [
        order[i : i + batch_size] for i in range(0, len(order), batch_size)
    ]
    if seed is not None:
        rng.shuffle(chunks)
    for chunk in chunks:
        lengths = np.array([len(features[i]) for i in chunk], "int32")
        padded = np.zeros((len(chunk), lengths.max(), MEL_BINS), "float32")
        for row, i in enumerate(chunk):
            padded[row, : lengths[row]] = features[i]
        yield {"features": padded, "lengths": lengths}, labels[chunk]


def build_model(time_masks, seed):
    """LengthMask -> SpecAugment-style masking -> Transformer -> pooling."""
    import keras

    from keras_dynmask import LengthMask
    from keras_dynmask import SinusoidalPositions
    from keras_dynmask import TimeFrequencyMasking
    from keras_dynmask import TransformerBlock

    features = keras.Input((None, MEL_BINS), name="features")
    lengths = keras.Input((), dtype="int32", name="lengths")
    x = LengthMask()(features, lengths=lengths)
    x = TimeFrequencyMasking(
        time_masks=time_masks,
        max_time_width=12,
        frequency_masks=2,
        max_frequency_width=6,
        seed=seed,
    )(x)
    x = keras.layers.Dense(64)(x)
    x = SinusoidalPositions()(x)
    for index in range(2):
        x = TransformerBlock(4, 128, dropout=0.1, name=f"block_{index}")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)  # over real frames only
    outputs = keras.layers.Dense(len(WORDS))(x)
    return keras.Model({"features": features, "lengths": lengths}, outputs)


def train_and_test(train, held_out, time_masks, seed, epochs):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(time_masks, seed)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    for epoch in range(epochs):
        model.fit(
            _dataset(batches(*train, 32, seed=seed * 1000 + epoch)),
            shuffle=False,  # batches() shuffles
            verbose=0,
        )
    return model.evaluate(
        _dataset(batches(*held_out, 64)), verbose=0, return_dict=True
    )["accuracy"]


def _dataset(generator):
    import tensorflow as tf

    elements = list(generator)
    signature = (
        {
            "features": tf.TensorSpec((None, None, MEL_BINS), tf.float32),
            "lengths": tf.TensorSpec((None,), tf.int32),
        },
        tf.TensorSpec((None,), tf.int32),
    )
    return tf.data.Dataset.from_generator(
        lambda: iter(elements), output_signature=signature
    ).apply(tf.data.experimental.assert_cardinality(len(elements)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-word", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run"
    )
    args = parser.parse_args()
    if args.quick:
        args.per_word, args.epochs, args.seeds = 12, 2, 1

    keras_dynmask.start_devices()
    start = time.time()
    espeak = ensure_espeak()
    train_audio, train_labels = clips(espeak, TRAIN_VOICES, args.per_word, 0)
    held_audio, held_labels = clips(
        espeak, HELD_OUT_VOICES, max(args.per_word // 4, 2), 1
    )
    train = ([log_mel(a) for a in train_audio], train_labels)
    held_out = ([log_mel(a) for a in held_audio], held_labels)
    frames = [len(f) for f in train[0] + held_out[0]]
    print(
        f"{len(train_labels)} training clips ({len(TRAIN_VOICES)} voices x "
        f"{len(ACCENTS)} accents), {len(held_labels)} held-out clips in "
        f"{len(HELD_OUT_VOICES)} unheard voices; {min(frames)} to "
        f"{max(frames)} frames of 10 ms ({time.time() - start:.0f} s)"
    )

    results = {}
    for time_masks, name in ((2, "with time masking"), (0, "without")):
        scores = []
        for seed in range(args.seeds):
            scores.append(
                train_and_test(train, held_out, time_masks, seed, args.epochs)
            )
            print(
                f"  {name:18s} seed {seed}: held-out accuracy "
                f"{scores[-1]:.3f} ({time.time() - start:.0f} s)"
            )
        results[name] = scores
    print(f"\nHeld-out word accuracy over {args.seeds} seeds (mean +- std):")
    for name, scores in results.items():
        print(f"  {name:18s} {np.mean(scores):.3f} +- {np.std(scores):.3f}")
    print(f"\nDone in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
