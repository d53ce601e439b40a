"""`python -m benchmarks [--quick]`: every benchmark, one markdown report."""

import argparse
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, a short run"
    )
    args = parser.parse_args()

    from benchmarks import attention
    from benchmarks import generation
    from benchmarks import inference
    from benchmarks import mask_construction
    from benchmarks import masking
    from benchmarks import quantization
    from benchmarks import scaling
    from benchmarks import scores
    from benchmarks import targets
    from benchmarks import train_step
    from benchmarks import written_out
    from keras_dynmask.tf import quiet

    quiet.start_devices()

    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    print("\n".join(masking.run(quick=args.quick)))
    print()
    print("\n".join(mask_construction.run(quick=args.quick)))
    print()
    print("\n".join(train_step.run(quick=args.quick)))
    print()
    print("\n".join(inference.run(quick=args.quick)))
    print()
    print("\n".join(quantization.run(batches=2 if args.quick else 8)))
    print()
    print("\n".join(scaling.run(quick=args.quick)))
    print()
    print("\n".join(attention.run(quick=args.quick)))
    print()
    print("\n".join(written_out.run(quick=args.quick)))
    print()
    print("\n".join(scores.run(quick=args.quick)))
    print()
    print("\n".join(generation.run(quick=args.quick)))
    print()
    print("\n".join(targets.table()))


if __name__ == "__main__":
    main()
