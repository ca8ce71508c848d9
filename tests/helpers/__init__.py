"""What several test files share: data, models and process launchers built at test time.

    tiny_dataset            a few annotated sentences and images (with a missing and a corrupt one)
    small_demo              the demo config cut to a few steps (system, relation-cache, multi-process tests)
    toy_model               a small Flax MLP, its optimizer and batches (steps, sharding, checkpoints)
    torch_resnet_reference  a torchvision-layout ResNet with random weights (conversion parity)
    localhost_processes     start and wait for several JAX processes on this host
    multiprocess_worker     one process of tests/test_multiprocess.py (run as a script)
    train_worker            one process of tests/test_train_multiprocess.py (run as a script)

Imported as ``from helpers import toy_model`` (pytest puts tests/ on sys.path).
"""
